"""NVML path of the NVIDIA probe and health, with a stand-in ``pynvml`` module.

No NVIDIA GPU or driver exists on the test machine, so this is the one place where a fake is
used: a module with the same function names and return shapes as nvidia-ml-py 12+ (names as
``str``, memory in bytes, compute capability as a ``(major, minor)`` tuple, ``NVMLError`` for
unsupported queries, as on consumer cards and Jetson).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from agent.app.health import HealthCollector
from agent.hardware import probe_hardware
from agent.hardware.nvidia import nvml_stats, probe_nvidia
from agent.profiles import select


class NVMLError(Exception):
    pass


def _fake_pynvml(calls: list[str]) -> types.ModuleType:
    mod = types.ModuleType("pynvml")
    mem = types.SimpleNamespace(total=24 * 1024**3, used=3 * 1024**3, free=21 * 1024**3)
    util = types.SimpleNamespace(gpu=87, memory=40)

    def unsupported(*_: object) -> None:
        raise NVMLError("Not Supported")

    mod.NVMLError = NVMLError  # type: ignore[attr-defined]
    mod.nvmlInit = lambda: calls.append("init")  # type: ignore[attr-defined]
    mod.nvmlShutdown = lambda: calls.append("shutdown")  # type: ignore[attr-defined]
    mod.nvmlSystemGetDriverVersion = lambda: "550.54.15"  # type: ignore[attr-defined]
    mod.nvmlDeviceGetCount = lambda: 2  # type: ignore[attr-defined]
    mod.nvmlDeviceGetHandleByIndex = lambda i: f"handle{i}"  # type: ignore[attr-defined]
    mod.nvmlDeviceGetName = lambda h: "NVIDIA GeForce RTX 4090" if h == "handle0" else "NVIDIA T400"  # type: ignore[attr-defined]
    mod.nvmlDeviceGetMemoryInfo = lambda h: mem  # type: ignore[attr-defined]
    mod.nvmlDeviceGetCudaComputeCapability = lambda h: (8, 9) if h == "handle0" else (7, 5)  # type: ignore[attr-defined]
    mod.nvmlDeviceGetUtilizationRates = lambda h: util if h == "handle0" else unsupported()  # type: ignore[attr-defined]
    mod.nvmlDeviceGetTemperature = lambda h, sensor: 64  # type: ignore[attr-defined]
    return mod


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(calls))
    return calls


def test_probe_nvidia__nvml_on_the_running_machine(nvml: list[str]) -> None:
    gpus = probe_nvidia(Path("/"))
    assert [(g.index, g.name, g.memory_mb, g.cuda_capability, g.driver, g.source) for g in gpus] == [
        (0, "NVIDIA GeForce RTX 4090", 24576, "8.9", "550.54.15", "nvml"),
        (1, "NVIDIA T400", 24576, "7.5", "550.54.15", "nvml"),
    ]
    assert nvml == ["init", "shutdown"]


def test_probe_nvidia__fixture_root_never_asks_nvml(nvml: list[str]) -> None:
    gpus = probe_nvidia(Path(__file__).resolve().parent.parent / "fixtures" / "x86-64-nvidia-desktop")
    assert [g.source for g in gpus] == ["procfs"] and nvml == []


def test_nvml_stats__unsupported_field_is_none(nvml: list[str]) -> None:
    stats = nvml_stats()
    assert stats is not None
    assert stats[0] == {
        "index": 0,
        "name": "NVIDIA GeForce RTX 4090",
        "utilization_percent": 87.0,
        "memory_used_mb": 3072,
        "memory_total_mb": 24576,
        "temperature_c": 64,
    }
    assert stats[1]["utilization_percent"] is None


def test_health_and_profile__with_nvml_gpu(nvml: list[str]) -> None:
    snap = HealthCollector(first_sample_s=0.0).snapshot()
    assert snap.nvidia_gpus is not None and snap.nvidia_gpus[0]["utilization_percent"] == 87.0
    assert "nvidia_gpus" not in snap.absent
    hw = probe_hardware("/")
    if hw.kind == "x86_64":
        profile, reasons = select(hw)
        assert profile.name == "x86-64-nvidia"
        assert "NVIDIA GPU: NVIDIA GeForce RTX 4090" in reasons[0]
