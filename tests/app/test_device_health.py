"""Health snapshot: real values on this machine, explicit absences, fixture-tree decoding."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest

from agent.app import health
from agent.app.health import HealthCollector, snapshot
from agent.hardware import probe_hardware

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def test_health__this_machine_real_values_and_explicit_absences(tmp_path: Path) -> None:
    snap = snapshot(model_store=tmp_path / "models", engine_stats={"queries_served": 3, "queue_depth": 0})
    data = json.loads(json.dumps(snap.to_dict()))  # JSON-serialisable
    absent = data["absent"]

    cpu = data["cpu"]
    assert cpu["cores"] == psutil.cpu_count() == len(cpu["per_core"])
    assert all(0.0 <= p <= 100.0 for p in cpu["per_core"]) and 0.0 <= cpu["percent"] <= 100.0
    assert data["load"] is not None and len(data["load"]) == 3
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    assert data["memory"]["total_mb"] == mem_kb // 1024
    assert data["disk"]["path"] == str(tmp_path / "models") and data["disk"]["total_mb"] > 0
    assert data["uptime_s"] > 0
    assert data["agent"]["pid"] == os.getpid() and data["agent"]["rss_mb"] > 1
    assert data["versions"]["agent"] and data["versions"]["python"]
    assert data["engine"] == {"queries_served": 3, "queue_depth": 0}

    host = probe_hardware("/")
    if any(z.temp_c is not None for z in host.thermal_zones):
        assert data["temperatures"]
    else:
        assert data["temperatures"] is None and "temperatures" in absent
    if host.kind != "raspberry-pi":
        assert data["throttling"] is None and "throttling" in absent
    if host.kind != "jetson":
        assert data["jetson"] is None and "jetson" in absent
    if data["nvidia_gpus"] is None:
        assert "nvidia_gpus" in absent
    assert data["thermal"] is None and absent["thermal"] == "no thermal guard running"
    for name in absent:  # an absent source is None, never zero
        assert data.get(name) is None, name
    for present in ("cpu", "load", "memory", "disk", "uptime_s"):
        assert present not in absent


def test_health__android_denied_proc_stat_is_absent_not_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """Termux on Android 8+ cannot read /proc/stat (psutil#1334): CPU use is absent, not 0 %."""

    def denied(percpu: bool = False) -> None:
        raise PermissionError(13, "Permission denied", "/proc/stat")

    monkeypatch.setattr(health.psutil, "cpu_times", denied)
    snap = HealthCollector(root=FIXTURES / "android-galaxy-s9", first_sample_s=0.0).snapshot()
    assert snap.cpu is None
    assert "Permission denied" in snap.absent["cpu"]
    assert snap.temperatures is None and snap.absent["temperatures"] == "no thermal zones"
    assert snap.uptime_s is None and "uptime_s" in snap.absent
    assert snap.memory is not None  # other sources still report


@pytest.mark.parametrize(
    ("device", "raw", "now", "since_boot"),
    [
        ("raspberry-pi-3b", "0x50005", ["throttled", "under_voltage"], ["throttled", "under_voltage"]),
        ("raspberry-pi-4b-4gb", "0x50000", [], ["throttled", "under_voltage"]),
        ("raspberry-pi-5-8gb", "0x0", [], []),
        ("raspberry-pi-zero-2w", "0x80008", ["soft_temperature_limit"], ["soft_temperature_limit"]),
    ],
)
def test_health__pi_throttling_bits_on_fixtures(
    device: str, raw: str, now: list[str], since_boot: list[str]
) -> None:
    snap = HealthCollector(root=FIXTURES / device, first_sample_s=0.0).snapshot()
    assert snap.throttling is not None
    assert (snap.throttling["raw"], snap.throttling["now"], snap.throttling["since_boot"]) == (
        raw,
        now,
        since_boot,
    )
    assert snap.throttling["source"] == "sysfs get_throttled"
    assert "cpu-thermal" in (snap.temperatures or {})
    assert snap.jetson is None and "jetson" in snap.absent


@pytest.mark.parametrize(
    ("device", "gpu_load", "mode", "temps"),
    [
        ("jetson-nano", 26.8, "MAXN", {"CPU-therm": 41.5, "GPU-therm": 39.0}),
        ("jetson-orin-nano-devkit", 84.0, "15W", {"gpu-thermal": 63.5, "tj-thermal": 65.562}),
        ("jetson-agx-orin", 0.0, "MAXN", {"cpu-thermal": 44.562, "tj-thermal": 44.343}),
    ],
)
def test_health__jetson_gpu_load_on_fixtures(
    device: str, gpu_load: float, mode: str, temps: dict[str, float]
) -> None:
    snap = HealthCollector(root=FIXTURES / device, first_sample_s=0.0).snapshot()
    assert snap.jetson == {"gpu_load_percent": gpu_load, "power_mode": mode}
    assert snap.temperatures is not None
    for zone, value in temps.items():
        assert snap.temperatures[zone] == value
    if device == "jetson-agx-orin":
        assert "gpu-thermal" not in snap.temperatures  # the offline (-256 C) sensor is left out
    assert snap.throttling is None and "throttling" in snap.absent
    assert snap.nvidia_gpus is None and "nvidia_gpus" in snap.absent


def test_health__collector_measures_the_interval_between_snapshots() -> None:
    collector = HealthCollector(first_sample_s=0.05)
    first = collector.snapshot()
    second = collector.snapshot()
    assert first.cpu is not None and second.cpu is not None
    assert second.agent["uptime_s"] >= first.agent["uptime_s"]


def test_health__nvml_without_a_driver_is_absent_with_the_reason() -> None:
    pytest.importorskip("pynvml")
    from agent.hardware.nvidia import probe_nvml

    if probe_nvml():
        pytest.skip("this machine has an NVIDIA driver: covered by the real-values test")
    snap = HealthCollector(first_sample_s=0.0).snapshot()
    assert snap.nvidia_gpus is None
    assert snap.absent["nvidia_gpus"] == "NVML does not initialise (no NVIDIA driver)"


def test_health__pi_hwmon_under_voltage_alarm_when_get_throttled_is_gone(tmp_path: Path) -> None:
    """Kernels that dropped the get_throttled file still have the rpi_volt hwmon alarm."""
    for index, (name, alarm) in enumerate([("cpu_thermal", None), ("rpi_volt", "1")]):
        dev = tmp_path / f"sys/class/hwmon/hwmon{index}"
        dev.mkdir(parents=True)
        (dev / "name").write_text(name + "\n")
        if alarm is not None:
            (dev / "in0_lcrit_alarm").write_text(alarm + "\n")
    snap = HealthCollector(root=tmp_path, first_sample_s=0.0).snapshot()
    assert snap.throttling == {"source": "hwmon rpi_volt", "under_voltage_now": True}


def test_busy_percent__guest_time_not_counted_twice() -> None:
    kind = type(psutil.cpu_times())
    zero = kind(*([0.0] * len(kind._fields)))
    after = zero._replace(user=30.0, idle=60.0, iowait=10.0, guest=20.0)  # guest is inside user
    assert health._busy_percent(zero, after) == 30.0
    assert health._busy_percent(after, after) == 0.0
