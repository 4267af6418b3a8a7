"""The ``analysis`` command's KataGo-style configuration (``.cfg`` files and overrides)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
