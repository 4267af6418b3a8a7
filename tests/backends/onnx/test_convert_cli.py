"""``katago-edge convert`` / ``verify`` end to end on g170-b6c96: outputs, manifests, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from edge_fixtures import model_file

from agent.cli.main import run


def _convert(models_dir: Path, reference_dir: Path, out: Path, *extra: str) -> int:
    args = ["convert", str(model_file(models_dir, "b6c96")), "--to", "onnx", "-o", str(out)]
    args += ["--positions", str(reference_dir / "sgf"), "--verify-positions", "40", *extra]
    return run(args)


def test_convert__fp16_writes_network_and_manifest_then_verify_passes(
    models_dir: Path, reference_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b6.fp16.onnx"
    assert _convert(models_dir, reference_dir, out, "--precision", "fp16") == 0
    manifest = json.loads((tmp_path / "b6.fp16.onnx.manifest.json").read_text())
    assert (manifest["format"], manifest["precision"], manifest["file"]) == ("onnx", "fp16", "b6.fp16.onnx")
    assert manifest["source"]["sha256"].startswith("f5d32604e3675c48")
    assert manifest["verification"]["positions"] == 40 and manifest["verification"]["passed"] is True
    assert {"onnx", "onnxruntime", "numpy"} <= set(manifest["tools"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b6.fp16.onnx", "b6.fp16.onnx.manifest.json"]
    peak = re.search(r"peak memory (\d+) MB", capsys.readouterr().err)  # issue #21: shown by convert
    assert peak is not None and 50 < int(peak.group(1)) < 100_000
    code = run(
        [
            "verify",
            str(out),
            "--reference",
            str(model_file(models_dir, "b6c96")),
            "--json",
            "--positions",
            str(reference_dir / "sgf"),
            "--verify-positions",
            "30",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["passed"] is True and report["positions"] == 30
    assert report["thresholds"]["winrate_abs_error.p99"] == ["<", 0.01]
    assert report["winrate_abs_error"]["p99"] < 0.01


def test_convert__int8_with_sgf_calibration_records_it(
    models_dir: Path, reference_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "b6.int8.onnx"
    code = _convert(
        models_dir,
        reference_dir,
        out,
        "--precision",
        "int8",
        "--calibration",
        str(reference_dir / "sgf"),
        "--calibration-positions",
        "16",
        "--calibration-method",
        "minmax",
        "--force",
    )
    assert code == 0 and out.is_file()
    manifest = json.loads((tmp_path / "b6.int8.onnx.manifest.json").read_text())
    cal = manifest["calibration"]
    assert cal["method"] == "minmax" and cal["positions"] == 16 and len(cal["ids"]) == 16
    assert cal["source"].startswith("sgf:")
    assert manifest["verification"]["positions"] == 40
    assert manifest["int8_mode"] == "static" and manifest["int8_weight_rounding"] == "gptq"  # the defaults


def test_convert__failing_verification_writes_nothing_unless_forced(
    models_dir: Path, reference_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b6.fp16.onnx"
    impossible = ("--precision", "fp16", "--threshold", "policy_kl.mean", "<", "0")
    assert _convert(models_dir, reference_dir, out, *impossible) == 1
    assert "refused (verification failed)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert _convert(models_dir, reference_dir, out, *impossible, "--force") == 0
    manifest = json.loads((tmp_path / "b6.fp16.onnx.manifest.json").read_text())
    assert manifest["verification"]["passed"] is False and manifest["verification"]["forced"] is True


def test_convert__not_a_katago_network_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "fake.bin.gz"
    bogus.write_bytes(b"this is not gzip")
    out = tmp_path / "out.onnx"
    assert run(["convert", str(bogus), "--to", "onnx", "--precision", "fp32", "-o", str(out)]) == 1
    assert "fake.bin.gz" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.bin.gz"]


def test_convert__unsupported_precision_for_the_runtime(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.onnx"
    args = ["convert", str(model_file(models_dir, "b6c96")), "--to", "onnx", "--precision", "int8-full"]
    assert run([*args, "-o", str(out)]) == 1
    assert (
        "precision 'int8-full' is not supported for onnx (supported: fp32, fp16, int8)"
        in capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []


def test_convert__calibration_folder_without_games(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    games = tmp_path / "games"
    games.mkdir()
    (games / "broken.sgf").write_text("no game tree here")
    out = tmp_path / "x.onnx"
    args = ["convert", str(model_file(models_dir, "b6c96")), "--to", "onnx", "--precision", "int8"]
    assert run([*args, "-o", str(out), "--calibration", str(games)]) == 1
    assert "no usable games" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["games"]


def test_convert__unknown_profile_for_thresholds(
    models_dir: Path, reference_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.onnx"
    assert _convert(models_dir, reference_dir, out, "--precision", "fp16", "--profile", "no-such-device") == 1
    assert "no profile named 'no-such-device'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
