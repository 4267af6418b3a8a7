"""Hardware detection: pure probes over a ``root`` folder returning frozen dataclasses.

``probe_hardware(root)`` reads only files below ``root`` (default ``/``), so a device tree
captured from a real device (``tests/fixtures/<device>/``) reproduces that device's detection on
any machine; the architecture too comes from ``root``'s ``/proc/cpuinfo``, not from the host.
Only two things look beyond ``root``: NVML and ``getprop``, and only when ``root`` is ``/``.
Runtimes (``probe_runtimes``) describe the running interpreter and are probed separately.

``kind`` is decided in this order: a Jetson (Tegra device tree or ``/etc/nv_tegra_release``), a
Raspberry Pi (device-tree model/compatible), Android (system properties or Termux), otherwise the
CPU architecture (``x86_64`` or ``arm64``; anything else is ``other``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.hardware._files import read_dt_strings
from agent.hardware.android import AndroidInfo, probe_android
from agent.hardware.cpu import CpuCluster, CpuInfo, probe_cpu
from agent.hardware.jetson import JetsonInfo, probe_jetson
from agent.hardware.memory import MemoryInfo, probe_memory
from agent.hardware.nvidia import NvidiaGpu, probe_nvidia
from agent.hardware.raspberry_pi import PiRevision, RaspberryPiInfo, ThrottleState, probe_raspberry_pi
from agent.hardware.runtimes import Runtimes, RuntimeStatus, probe_runtimes
from agent.hardware.thermal_zones import ThermalZone, probe_thermal_zones

__all__ = [
    "KINDS",
    "AndroidInfo",
    "CpuCluster",
    "CpuInfo",
    "Hardware",
    "JetsonInfo",
    "MemoryInfo",
    "NvidiaGpu",
    "PiRevision",
    "RaspberryPiInfo",
    "RuntimeStatus",
    "Runtimes",
    "ThermalZone",
    "ThrottleState",
    "probe_hardware",
    "probe_runtimes",
]

KINDS = ("raspberry-pi", "jetson", "android", "x86_64", "arm64", "other")


@dataclass(frozen=True)
class Hardware:
    kind: str  # one of KINDS
    model: str  # human-readable board / device / CPU name
    root: str
    cpu: CpuInfo
    memory: MemoryInfo | None
    raspberry_pi: RaspberryPiInfo | None = None
    jetson: JetsonInfo | None = None
    android: AndroidInfo | None = None
    nvidia_gpus: tuple[NvidiaGpu, ...] = ()
    thermal_zones: tuple[ThermalZone, ...] = ()
    runtimes: Runtimes | None = None  # None: not probed

    @property
    def memory_mb(self) -> int | None:
        return self.memory.total_mb if self.memory else None

    def with_runtimes(self, runtimes: Runtimes | None) -> Hardware:
        return dataclasses.replace(self, runtimes=runtimes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (frozensets become sorted lists; Android's raw properties are left out)."""
        data = _jsonable(dataclasses.asdict(self))
        if self.android is not None:
            data["android"].pop("properties", None)
        if self.runtimes is not None:
            data["runtimes"] = data["runtimes"]["items"]
        data["memory_mb"] = self.memory_mb
        return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (frozenset, set)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _kind_and_model(
    cpu: CpuInfo,
    pi: RaspberryPiInfo | None,
    jetson: JetsonInfo | None,
    android: AndroidInfo | None,
    root: Path,
) -> tuple[str, str]:
    if jetson is not None:
        return "jetson", jetson.model
    if pi is not None:
        return "raspberry-pi", pi.model
    if android is not None:
        return "android", android.model
    dt_model = read_dt_strings(root, "/proc/device-tree/model")
    model = dt_model[0] if dt_model else (cpu.model or "unknown")
    if cpu.arch == "x86_64":
        return "x86_64", model
    if cpu.arch == "aarch64":
        return "arm64", model
    return "other", model


def probe_hardware(root: Path | str = Path("/"), *, runtimes: Runtimes | None = None) -> Hardware:
    """Everything detectable from files under ``root`` (plus NVML/getprop when ``root`` is ``/``)."""
    root = Path(root)
    cpu = probe_cpu(root)
    jetson = probe_jetson(root)
    pi = probe_raspberry_pi(root) if jetson is None else None
    android = probe_android(root) if jetson is None and pi is None else None
    kind, model = _kind_and_model(cpu, pi, jetson, android, root)
    return Hardware(
        kind=kind,
        model=model,
        root=str(root),
        cpu=cpu,
        memory=probe_memory(root),
        raspberry_pi=pi,
        jetson=jetson,
        android=android,
        nvidia_gpus=probe_nvidia(root) if kind in ("x86_64", "arm64", "other") else (),
        thermal_zones=probe_thermal_zones(root),
        runtimes=runtimes,
    )
