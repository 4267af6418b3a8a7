"""The generated KataGo config and the settings model (no binary needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.engines.katago_binary import KataGoSettings, binary_from_path, find_katago
from agent.engines.katago_config import GENERIC_OPENCL_TUNING, config_entries, pocl_only, prepare_config
from agent.errors import EngineError


def test_settings__reject_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="numAnalysisThreads"):
        KataGoSettings.model_validate({"numAnalysisThreads": 4})


def test_config_entries__carry_every_setting(tmp_path: Path) -> None:
    settings = KataGoSettings(
        num_analysis_threads=3,
        num_search_threads_per_analysis_thread=2,
        nn_max_batch_size=16,
        nn_cache_size_power_of_two=17,
        report_analysis_winrates_as="SIDETOMOVE",
        backend="cuda",
        device=1,
        use_fp16="false",
        max_visits=200,
        extra={"nnRandomize": False, "wideRootNoise": 0.04},
    )
    cfg = config_entries(settings, tmp_path / "home", None)
    assert cfg["numAnalysisThreads"] == "3"
    assert cfg["numSearchThreadsPerAnalysisThread"] == "2"
    assert cfg["nnMaxBatchSize"] == "16"
    assert cfg["nnCacheSizePowerOfTwo"] == "17"
    assert cfg["reportAnalysisWinratesAs"] == "SIDETOMOVE"
    assert cfg["cudaDeviceToUse"] == "1"
    assert cfg["cudaUseFP16"] == "false"
    assert cfg["maxVisits"] == "200"
    assert cfg["logToStderr"] == "true"
    assert cfg["homeDataDir"] == str(tmp_path / "home")
    assert cfg["nnRandomize"] == "false"
    assert cfg["wideRootNoise"] == "0.04"
    assert "openclTunerFile" not in cfg


@pytest.mark.parametrize(
    ("backend", "key"),
    [("opencl", "openclDeviceToUse"), ("tensorrt", "trtDeviceToUse"), ("metal", "metalDeviceToUse")],
)
def test_config_entries__device_key_per_backend(backend: str, key: str, tmp_path: Path) -> None:
    cfg = config_entries(KataGoSettings(backend=backend, device=0), tmp_path, None)  # type: ignore[arg-type]
    assert cfg[key] == "0"


def test_prepare_config__generic_tuning_written_atomically(tmp_path: Path) -> None:
    settings = KataGoSettings(cache_dir=tmp_path, opencl_tuning="generic")
    path, overrides = prepare_config(settings)
    assert overrides == {}
    text = path.read_text()
    tuner = tmp_path / "katago-home" / "opencltuning" / "katago-edge-generic-tune13.txt"
    assert f"openclTunerFile = {tuner}" in text
    assert tuner.read_text() == GENERIC_OPENCL_TUNING
    again, _ = prepare_config(settings)
    assert again == path  # same settings -> same file, no rewrite
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_prepare_config__user_config_used_as_is(tmp_path: Path) -> None:
    user = tmp_path / "mine.cfg"
    user.write_text("numAnalysisThreads = 1\n")
    path, overrides = prepare_config(KataGoSettings(cache_dir=tmp_path, opencl_tuning="tune"), user)
    assert path == user
    assert overrides == {"logToStderr": "true"}
    _, overrides = prepare_config(KataGoSettings(cache_dir=tmp_path, opencl_tuning="generic"), user)
    assert overrides["openclTunerFile"].endswith("katago-edge-generic-tune13.txt")
    with pytest.raises(EngineError, match="does not exist"):
        prepare_config(KataGoSettings(cache_dir=tmp_path), tmp_path / "missing.cfg")


def test_find_katago__explicit_path_must_be_executable(tmp_path: Path) -> None:
    fake = tmp_path / "katago"
    fake.write_text("#!/bin/sh\n")
    with pytest.raises(EngineError, match="not executable"):
        binary_from_path(fake)
    with pytest.raises(EngineError, match="does not exist"):
        find_katago(tmp_path / "nope")


def test_find_katago__no_download_names_the_ways_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EngineError, match="--katago PATH"):
        find_katago(None, tmp_path / "empty-cache", download=False)


def test_find_katago__katrain_download_refused_on_arm_before_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agent.engines.katago_binary as kb

    monkeypatch.setenv("PATH", str(tmp_path))  # no katago on PATH
    monkeypatch.setattr(kb.platform, "machine", lambda: "aarch64")
    with pytest.raises(EngineError, match=r"Linux x86-64 only, and this machine is linux/aarch64"):
        find_katago(None, tmp_path / "cache", download=True)
    assert not (tmp_path / "cache").exists()  # nothing fetched


def test_binary_from_path__appimage_runs_without_fuse(tmp_path: Path) -> None:
    fake = tmp_path / "katago"
    fake.write_bytes(b"\x7fELF\x02\x01\x01\x00AI\x02" + bytes(32))
    fake.chmod(0o755)
    assert binary_from_path(fake).env == {"APPIMAGE_EXTRACT_AND_RUN": "1"}


@pytest.mark.parametrize(
    ("icds", "expected"),
    [
        ({"pocl.icd": "libpocl.so.2.10.0\n"}, True),
        ({"pocl.icd": "libpocl.so.2", "nvidia.icd": "libnvidia-opencl.so.1"}, False),
        ({}, False),
    ],
)
def test_pocl_only__generic_tuning_only_for_cpu_opencl(
    icds: dict[str, str], expected: bool, tmp_path: Path
) -> None:
    for name, text in icds.items():
        (tmp_path / name).write_text(text)
    assert pocl_only(tmp_path) is expected
