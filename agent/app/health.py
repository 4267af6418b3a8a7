"""Health snapshot of the device and the agent: what the fleet sees every N seconds.

Fields (``HealthSnapshot.to_dict()``, JSON-serialisable):

* ``cpu``: use per core and in total (%) over the window since the previous snapshot (the first
  one samples ``first_sample_s``), and the load average;
* ``memory``: RAM and swap (MB, %);
* ``disk``: the file system holding the model store;
* ``temperatures``: °C per thermal zone (offline Jetson sensors, -256 °C, are left out);
* ``throttling``: Raspberry Pi under-voltage / frequency cap / throttling / soft temperature
  limit, now and since boot, from ``/sys/devices/platform/soc/soc:firmware/get_throttled`` or,
  on the running Pi, ``vcgencmd get_throttled``;
* ``jetson``: GPU load (%) from ``/sys/devices{,/platform}/gpu.0/load`` and the nvpmodel power mode;
* ``nvidia_gpus``: utilisation, memory and temperature per GPU through NVML;
* ``uptime_s`` (host, ``/proc/uptime``), ``agent`` (pid, RSS, agent uptime), ``versions``,
  ``engine`` (``Engine.stats()`` as given), ``thermal`` (the thermal guard's status).

A source that does not exist or cannot be read (Termux cannot read ``/proc/stat``; a PC has no
throttling bits) is ``None`` in its field and listed by name in ``absent`` with the reason: never
a zero, never an exception. File-based sources (temperatures, throttling, Jetson, uptime) are read
under ``root``; psutil and NVML always describe the running machine.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from agent import __version__
from agent.app.thermal import ThermalGuard, ThermalStatus
from agent.hardware._files import read_text
from agent.hardware.jetson import parse_nvpmodel_query, read_gpu_load, read_power_mode
from agent.hardware.nvidia import nvml_importable, nvml_stats
from agent.hardware.raspberry_pi import (
    ThrottleState,
    parse_throttled,
    read_throttled,
    read_undervoltage_hwmon,
)
from agent.hardware.thermal_zones import probe_thermal_zones

logger = logging.getLogger(__name__)

SUBPROCESS_TIMEOUT_S = 2.0
FIRST_SAMPLE_S = 0.2
_MB = 1 << 20


@dataclass(frozen=True)
class HealthSnapshot:
    timestamp: float
    cpu: dict[str, Any] | None
    load: list[float] | None
    memory: dict[str, Any] | None
    disk: dict[str, Any] | None
    temperatures: dict[str, float] | None
    throttling: dict[str, Any] | None
    jetson: dict[str, Any] | None
    nvidia_gpus: list[dict[str, Any]] | None
    uptime_s: float | None
    agent: dict[str, Any]
    versions: dict[str, str | None]
    engine: dict[str, Any] | None
    thermal: dict[str, Any] | None
    absent: dict[str, str] = field(default_factory=dict)  # source -> why it is missing

    def to_dict(self) -> dict[str, Any]:
        """Every field under its own name (the health document's top level), in field order."""
        return {**vars(self), "absent": dict(self.absent)}


def _run_tool(name: str, *args: str) -> subprocess.CompletedProcess[str] | None:
    """Run a device tool found on PATH (with the probe timeout); None when it is absent or fails."""
    exe = shutil.which(name)
    if exe is None:
        return None
    try:
        return subprocess.run(
            [exe, *args], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.debug("%s %s failed: %s", name, " ".join(args), exc)
        return None


def read_vcgencmd_throttled() -> ThrottleState | None:
    """``vcgencmd get_throttled`` on the running Pi (needs /dev/vcio, group video), or None."""
    out = _run_tool("vcgencmd", "get_throttled")
    if out is None or out.returncode != 0 or "throttled=" not in out.stdout:
        return None
    return parse_throttled(out.stdout)


def read_nvpmodel_query() -> str | None:
    """``nvpmodel -q`` on the running Jetson, when its status files cannot be read."""
    out = _run_tool("nvpmodel", "-q")
    return None if out is None else parse_nvpmodel_query(out.stdout)


class HealthCollector:
    """Takes snapshots; keeps the previous CPU times so each snapshot covers the interval since the last."""

    def __init__(
        self,
        *,
        root: Path = Path("/"),
        model_store: Path | None = None,
        versions: Mapping[str, str | None] | None = None,
        thermal: ThermalGuard | None = None,
        first_sample_s: float = FIRST_SAMPLE_S,
    ) -> None:
        self.root = Path(root)
        self.model_store = model_store
        self.versions: dict[str, str | None] = {
            "agent": __version__,
            "python": platform.python_version(),
            **dict(versions or {}),
        }
        self.thermal = thermal
        self.first_sample_s = first_sample_s
        self._started = time.time()
        self._lock = threading.Lock()
        self._last_cpu: list[Any] | None = None
        self._process = psutil.Process()

    # --- sources; each returns (value, None) or (None, why absent) -------------------------------

    def _cpu(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            with self._lock:
                before = self._last_cpu
                if before is None:
                    before = psutil.cpu_times(percpu=True)
                    time.sleep(self.first_sample_s)
                after = psutil.cpu_times(percpu=True)
                self._last_cpu = after
        except (OSError, psutil.Error) as exc:  # PermissionError on /proc/stat (Android 8+)
            return None, f"cannot read CPU times: {exc}"
        per_core = [_busy_percent(b, a) for b, a in zip(before, after, strict=False)]
        if not per_core:
            return None, "no CPU times"
        return {
            "percent": round(sum(per_core) / len(per_core), 1),
            "per_core": per_core,
            "cores": len(per_core),
        }, None

    def _memory(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            vm = psutil.virtual_memory()
            sw = psutil.swap_memory()
        except (OSError, psutil.Error) as exc:
            return None, f"cannot read memory: {exc}"
        return {
            "total_mb": vm.total // _MB,
            "available_mb": vm.available // _MB,
            "used_percent": vm.percent,
            "swap_total_mb": sw.total // _MB,
            "swap_used_mb": sw.used // _MB,
            "swap_percent": sw.percent if sw.total else None,
        }, None

    def _disk(self) -> tuple[dict[str, Any] | None, str | None]:
        if self.model_store is None:
            return None, "no model store configured"
        path = Path(self.model_store)
        while not path.exists() and path != path.parent:
            path = path.parent  # the store may not exist yet: report the disk it will be on
        try:
            du = psutil.disk_usage(str(path))
        except (OSError, psutil.Error) as exc:
            return None, f"cannot stat {self.model_store}: {exc}"
        return {
            "path": str(self.model_store),
            "total_mb": du.total // _MB,
            "free_mb": du.free // _MB,
            "used_percent": du.percent,
        }, None

    def _temperatures(self) -> tuple[dict[str, float] | None, str | None]:
        zones = probe_thermal_zones(self.root)
        temps: dict[str, float] = {}
        for zone in zones:
            if zone.temp_c is None:
                continue
            key = zone.name if zone.name not in temps else f"{zone.name}#{zone.index}"
            temps[key] = round(zone.temp_c, 3)
        if not temps:
            return None, "no readable thermal zone" if zones else "no thermal zones"
        return temps, None

    def _throttling(self) -> tuple[dict[str, Any] | None, str | None]:
        state, source = read_throttled(self.root), "sysfs get_throttled"
        if state is None and self.root == Path("/"):
            state, source = read_vcgencmd_throttled(), "vcgencmd get_throttled"
        if state is not None:
            return {"source": source, **state.to_dict()}, None
        alarm = read_undervoltage_hwmon(self.root)
        if alarm is not None:  # only the live under-voltage alarm; the rest is unknown, not "no"
            return {"source": "hwmon rpi_volt", "under_voltage_now": alarm}, None
        return None, "no get_throttled source (not a Raspberry Pi, or no access to /dev/vcio)"

    def _jetson(self) -> tuple[dict[str, Any] | None, str | None]:
        load = read_gpu_load(self.root)
        mode = read_power_mode(self.root)
        if mode is None and load is not None and self.root == Path("/"):
            mode = read_nvpmodel_query()
        if load is None and mode is None:
            return None, "not a Jetson (no gpu.0/load, no nvpmodel status)"
        return {"gpu_load_percent": load, "power_mode": mode}, None

    def _nvidia(self) -> tuple[list[dict[str, Any]] | None, str | None]:
        if self.root != Path("/"):
            return None, "NVML describes the running machine only"
        if not nvml_importable():
            return None, "NVML bindings not installed (pip install 'katago-edge[nvidia]')"
        stats = nvml_stats()
        if stats is None:
            return None, "NVML does not initialise (no NVIDIA driver)"
        if not stats:
            return None, "NVML sees no GPU"
        return stats, None

    def _uptime(self) -> tuple[float | None, str | None]:
        text = read_text(self.root, "/proc/uptime")
        try:
            return (float(text.split()[0]), None) if text else (None, "no /proc/uptime")
        except (ValueError, IndexError):
            return None, "unparseable /proc/uptime"

    def _load(self) -> tuple[list[float] | None, str | None]:
        try:
            return [round(x, 2) for x in os.getloadavg()], None
        except OSError as exc:
            return None, f"no load average: {exc}"

    def _agent(self) -> dict[str, Any]:
        try:
            rss_mb: float | None = round(self._process.memory_info().rss / _MB, 1)
        except (OSError, psutil.Error):
            rss_mb = None
        return {"pid": os.getpid(), "rss_mb": rss_mb, "uptime_s": round(time.time() - self._started, 1)}

    # --- the snapshot ----------------------------------------------------------------------------

    def snapshot(self, engine_stats: Mapping[str, Any] | None = None) -> HealthSnapshot:
        absent: dict[str, str] = {}

        def take(name: str, result: tuple[Any, str | None]) -> Any:
            value, why = result
            if why is not None:
                absent[name] = why
            return value

        thermal: ThermalStatus | None = self.thermal.status if self.thermal is not None else None
        if thermal is None:
            absent["thermal"] = "no thermal guard running"
        if engine_stats is None:
            absent["engine"] = "no engine statistics given"
        return HealthSnapshot(
            timestamp=time.time(),
            cpu=take("cpu", self._cpu()),
            load=take("load", self._load()),
            memory=take("memory", self._memory()),
            disk=take("disk", self._disk()),
            temperatures=take("temperatures", self._temperatures()),
            throttling=take("throttling", self._throttling()),
            jetson=take("jetson", self._jetson()),
            nvidia_gpus=take("nvidia_gpus", self._nvidia()),
            uptime_s=take("uptime_s", self._uptime()),
            agent=self._agent(),
            versions=dict(self.versions),
            engine=dict(engine_stats) if engine_stats is not None else None,
            thermal=thermal.to_dict() if thermal is not None else None,
            absent=absent,
        )


def _busy_percent(before: Any, after: Any) -> float:
    """Busy share of one core between two ``cpu_times`` samples (idle and iowait count as idle).

    On Linux ``guest``/``guest_nice`` time is already included in ``user``/``nice`` (proc(5)), so
    it is left out of the total, as psutil's own ``cpu_percent`` does.
    """

    def total(t: Any) -> float:
        return float(sum(t)) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    total_delta = total(after) - total(before)
    if total_delta <= 0:
        return 0.0
    idle = float(after.idle - before.idle) + float(
        getattr(after, "iowait", 0.0) - getattr(before, "iowait", 0.0)
    )
    return round(max(0.0, min(100.0, 100.0 * (1.0 - idle / total_delta))), 1)


def snapshot(
    root: Path = Path("/"),
    engine_stats: Mapping[str, Any] | None = None,
    *,
    model_store: Path | None = None,
    versions: Mapping[str, str | None] | None = None,
    thermal: ThermalGuard | None = None,
) -> HealthSnapshot:
    """One snapshot from a fresh collector (CPU use sampled over ``FIRST_SAMPLE_S``)."""
    collector = HealthCollector(root=root, model_store=model_store, versions=versions, thermal=thermal)
    return collector.snapshot(engine_stats)
