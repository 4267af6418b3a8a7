"""stdin/stdout transport and the `analysis` command's KataGo-style configuration."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest
from protocol_helpers import make_engine

from agent.cli.analysis import (
    engine_settings,
    load_config,
    parse_cfg_text,
    parse_overrides,
    runtime_entries,
    runtime_threads,
)
from agent.errors import ConfigError
from agent.models.serving import RuntimeEntry
from agent.protocol.service import AnalysisService
from agent.transports.local.stdio import StdioTransport, encode_line

Q = {"moves": [["B", "D4"]], "rules": "chinese", "komi": 7.5, "boardXSize": 9, "boardYSize": 9}


def _lines(*objs: object) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def test_stdio__eof_finishes_queued_work() -> None:
    svc = AnalysisService(make_engine(max_visits=15))
    stdin = io.BytesIO(_lines({"id": "a", **Q}, {"id": "b", **Q, "analyzeTurns": [0, 1]}) + b"\xff\n")
    stdout = io.BytesIO()
    assert StdioTransport(svc, stdin, stdout).serve() == 0
    out = [json.loads(line) for line in stdout.getvalue().splitlines()]
    finals = sorted((r["id"], r["turnNumber"]) for r in out if r.get("isDuringSearch") is False)
    assert finals == [("a", 1), ("b", 0), ("b", 1)]
    assert all(r["rootInfo"]["visits"] >= 15 for r in out if "rootInfo" in r)
    assert sum("error" in r for r in out) == 1


def test_stdio__quit_without_waiting_still_gives_final_responses() -> None:
    svc = AnalysisService(make_engine(max_visits=10**9))
    stdin = io.BytesIO(_lines(*({"id": f"q{i}", **Q} for i in range(3))))
    stdout = io.BytesIO()
    StdioTransport(svc, stdin, stdout, quit_without_waiting=True).serve()
    out = [json.loads(line) for line in stdout.getvalue().splitlines()]
    finals = [r for r in out if r.get("isDuringSearch") is False]
    assert sorted(r["id"] for r in finals) == ["q0", "q1", "q2"]


def test_stdio__concurrent_emits_never_interleave() -> None:
    svc = AnalysisService(make_engine())
    stdout = io.BytesIO()
    t = StdioTransport(svc, io.BytesIO(b""), stdout)
    big = {"id": "x", "data": list(range(2000))}
    threads = [threading.Thread(target=lambda: [t.emit(big) for _ in range(20)]) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    svc.close()
    lines = stdout.getvalue().splitlines()
    assert len(lines) == 80 and all(json.loads(line) == big for line in lines)


def test_stdio__nan_becomes_null() -> None:
    assert json.loads(encode_line({"id": "n", "v": float("nan"), "l": [float("inf"), 1.0]})) == {
        "id": "n",
        "v": None,
        "l": [None, 1.0],
    }


def test_command__katago_cfg_and_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "analysis.cfg"
    cfg.write_text(
        "# KaTrain's analysis_config.cfg\nreportAnalysisWinratesAs = BLACK\nmaxVisits = 500  # comment\n"
        "numAnalysisThreads = 12\nnumSearchThreads = 8\nnnMaxBatchSize = 96\nnnCacheSizePowerOfTwo = 20\n"
        "nnMutexPoolSizePowerOfTwo = 16\nnnRandomize = true\nopenclUseFP16 = auto\nmysteryKey = 3\n"
    )
    settings = engine_settings(
        load_config(str(cfg), ["homeDataDir=/tmp/x,wideRootNoise=0.0", "maxVisits=77"])
    )
    assert settings["params"].max_visits == 77
    assert settings["params"].num_threads == 8
    assert settings["params"].wide_root_noise == 0.0
    assert settings["num_analysis_threads"] == 12 and settings["max_batch_size"] == 96
    assert settings["cache_size"] == 1 << 17 and settings["randomize"] is True
    assert settings["unknown_keys"] == ["mysteryKey"]
    assert "mysteryKey" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("cfg", "analysis", "search", "cores", "expected"),
    [
        ({}, 1, 1, 8, 1),  # KataGo's Eigen default: one runtime thread per search thread
        ({}, 2, 3, 4, 4),  # ... up to the CPU count
        ({"numRuntimeThreads": "3"}, 1, 1, 8, 3),
        ({"numEigenThreadsPerModel": "2"}, 4, 4, 8, 2),  # KataGo's key for the same thing
    ],
)
def test_command__runtime_threads(
    monkeypatch: pytest.MonkeyPatch,
    cfg: dict[str, str],
    analysis: int,
    search: int,
    cores: int,
    expected: int,
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert runtime_threads(cfg, analysis, search) == expected


def test_command__search_and_runtime_threads_from_override_config() -> None:
    settings = engine_settings(load_config(None, ["numSearchThreads=2,numRuntimeThreads=1"]))
    assert settings["params"].num_threads == 2 and settings["runtime_threads"] == 1
    assert settings["unknown_keys"] == []


@pytest.mark.parametrize(
    ("text", "message"),
    [("novalue\n", "expected 'key = value'"), ("= 3\n", "empty key")],
)
def test_command__bad_cfg_lines(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_cfg_text(text, "x.cfg")


def test_command__bad_values_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        engine_settings({"maxVisits": "lots"})
    with pytest.raises(ConfigError):
        engine_settings({"nnRandomize": "maybe"})
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])


def test_command__runtime_entries_from_the_options() -> None:
    assert runtime_entries(None, "fp32") == [RuntimeEntry("onnx", "fp32"), RuntimeEntry("numpy", "fp32")]
    assert runtime_entries("tflite", "fp16") == [RuntimeEntry("tflite", "fp16", required=True)]
