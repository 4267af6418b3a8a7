"""End to end: ``katago-edge rawnn`` on the recorded positions reproduces KataGo's kata-raw-nn.

Here the input features come from our own game package (replaying ``moves`` under the recorded
rules and komi), so this also judges the V7 feature builder against KataGo.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from edge_fixtures import model_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "network"))
from network_refdata import REFERENCE_FILES, Errors, compare_fields, one_blas_thread

from agent.backends.numpy.runtime import NumpyNet
from agent.cli import main as cli
from agent.cli.rawnn import run_rawnn
from agent.network.reader import read_network


@pytest.fixture(autouse=True, scope="module")
def _single_blas_thread() -> Iterator[None]:
    with one_blas_thread():
        yield


def _records(reference_dir: Path, key: str) -> list[dict[str, Any]]:
    with (reference_dir / REFERENCE_FILES[key]).open() as fh:
        return [json.loads(line) for line in fh]


def _query(rec: dict[str, Any]) -> str:
    return json.dumps(
        {
            "id": rec["id"],
            "moves": rec["moves"],
            "rules": rec["rules"],
            "komi": rec["komi"],
            "boardXSize": rec["board_x_size"],
            "boardYSize": rec["board_y_size"],
        }
    )


@pytest.mark.parametrize("key", ["b6c96", "b7c96-gqa"])
def test_rawnn__all_recorded_positions_match_katago(models_dir: Path, reference_dir: Path, key: str) -> None:
    records = _records(reference_dir, key)
    network = read_network(model_file(models_dir, key))
    out = io.StringIO()
    run_rawnn(NumpyNet(network), network, io.StringIO("\n".join(_query(r) for r in records)), out)
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [a["id"] for a in answers] == [r["id"] for r in records]
    errors = Errors()
    for ans, rec in zip(answers, records, strict=True):
        compare_fields(ans, rec["rawnn"], rec["id"], errors, policy_only=False)
    assert not errors.violations(), errors.worst


def test_rawnn__cli_b10c384_with_optimism_zero(
    models_dir: Path, reference_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [r for r in _records(reference_dir, "b10c384") if r["selection_reason"] != "spread"][:6]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(_query(r) for r in records) + "\n"))
    model = str(model_file(models_dir, "b10c384"))
    assert cli.run(["rawnn", "--model", model, "--policy-optimism", "0"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    errors = Errors()
    for ans, rec in zip(answers, records, strict=True):
        compare_fields(ans, rec["rawnn_optimism0"], rec["id"], errors, policy_only=True)
        compare_fields(ans, rec["rawnn"], rec["id"], Errors(), policy_only=False)  # scalars
        assert abs(ans["whiteWin"] - rec["rawnn"]["whiteWin"]) < 1e-4
    assert not errors.violations(), errors.worst


def test_rawnn__bad_lines_get_errors_and_features_dump(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        "not json",
        json.dumps({"id": "off-board", "moves": [["B", "Z99"]]}),
        json.dumps(
            {"id": "tiny", "moves": [["B", "A1"]], "boardXSize": 2, "boardYSize": 2, "rules": "chinese"}
        ),
    ]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines)))
    model = str(model_file(models_dir, "b6c96"))
    assert cli.run(["rawnn", "--model", model, "--dump-features", "--symmetry", "3"]) == 0
    bad_json, bad_move, tiny = (json.loads(x) for x in capsys.readouterr().out.splitlines())
    assert bad_json["id"] is None and "JSON" in bad_json["error"]
    assert bad_move == {"id": "off-board", "error": "Could not parse board location: Z99"}
    assert len(tiny["policy"]) == 4 and tiny["policy"][2] is None  # A1 = bottom-left = index 2
    assert abs(sum(p for p in tiny["policy"] if p is not None) + tiny["policyPass"] - 1) < 1e-5
    assert tiny["features"]["spatial"][2][1][0] == 1  # White to move: the black stone is "opponent"
    assert len(tiny["whiteOwnership"]) == 4


def test_rawnn__optimism_out_of_range_is_usage_error(models_dir: Path) -> None:
    assert cli.run(["rawnn", "--model", str(model_file(models_dir, "b6c96")), "--policy-optimism", "2"]) == 2


def test_rawnn__onnx_runtime_matches_katago(
    models_dir: Path,
    reference_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    records = _records(reference_dir, "b7c96-cnorm")[::4]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(_query(r) for r in records)))
    model = str(model_file(models_dir, "b7c96-cnorm"))
    assert cli.run(["rawnn", "--model", model, "--runtime", "onnx"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    errors = Errors()
    for ans, rec in zip(answers, records, strict=True):
        compare_fields(ans, rec["rawnn"], rec["id"], errors, policy_only=False)
    assert errors.worst and not errors.violations(), errors.worst
