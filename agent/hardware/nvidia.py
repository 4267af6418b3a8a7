"""NVIDIA discrete GPUs: through NVML (``pip install nvidia-ml-py``, import ``pynvml``) when it is
importable and the probe looks at the running machine, else from the driver's procfs files.

NVML is the stable interface ("both NVML and the Python bindings are backwards compatible",
nvidia-smi man page); the text output of nvidia-smi is not. Each NVML call can raise
``NVMLError_NotSupported`` (consumer cards, Jetson's partial NVML), so every field is optional.
Without NVML (or under a fixture ``root``), ``/proc/driver/nvidia/gpus/<bus>/information``
(``Model:  NVIDIA GeForce RTX 3060``) and ``/proc/driver/nvidia/version`` still name the GPUs.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent.hardware._files import read_key_values, read_text, under

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class NvidiaGpu:
    index: int
    name: str
    memory_mb: int | None = None
    cuda_capability: str | None = None
    driver: str | None = None
    bus: str | None = None
    source: str = "nvml"  # "nvml" or "procfs"


def _nvml() -> Any | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def nvml_importable() -> bool:
    """Whether the NVML bindings (``pynvml`` from nvidia-ml-py) import."""
    return _nvml() is not None


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:  # NVMLError_* subclasses; NotSupported is common on Jetson/consumer
        logger.debug("NVML call %s failed: %s", getattr(fn, "__name__", fn), exc)
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _with_nvml(per_gpu: Callable[[Any, int, Any], T]) -> list[T] | None:
    """``per_gpu(nvml, index, handle)`` for every GPU NVML sees, between ``nvmlInit`` and
    ``nvmlShutdown``; None when NVML is not importable or does not initialise."""
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded
        logger.debug("NVML init failed: %s", exc)
        return None
    try:
        out = []
        for index in range(_call(nvml.nvmlDeviceGetCount) or 0):
            handle = _call(nvml.nvmlDeviceGetHandleByIndex, index)
            if handle is not None:
                out.append(per_gpu(nvml, index, handle))
        return out
    finally:
        _call(nvml.nvmlShutdown)


def probe_nvml() -> list[NvidiaGpu] | None:
    """GPUs seen by NVML, or None when NVML is not importable or does not initialise."""

    def gpu(nvml: Any, index: int, handle: Any) -> NvidiaGpu:
        mem = _call(nvml.nvmlDeviceGetMemoryInfo, handle)
        cap = _call(nvml.nvmlDeviceGetCudaComputeCapability, handle)
        return NvidiaGpu(
            index=index,
            name=_text(_call(nvml.nvmlDeviceGetName, handle)) or f"GPU {index}",
            memory_mb=int(mem.total) // (1 << 20) if mem is not None else None,
            cuda_capability=f"{cap[0]}.{cap[1]}" if cap else None,
            driver=_text(_call(nvml.nvmlSystemGetDriverVersion)),
        )

    return _with_nvml(gpu)


def probe_procfs(root: Path) -> list[NvidiaGpu]:
    """GPUs named by the NVIDIA kernel driver's procfs files under ``root``."""
    gpus_dir = under(root, "/proc/driver/nvidia/gpus")
    try:
        buses = sorted(p.name for p in gpus_dir.iterdir())
    except OSError:
        return []
    version = read_text(root, "/proc/driver/nvidia/version") or ""
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+(?:\.\d+)+)", version)
    driver = match.group(1) if match else None
    gpus = []
    for index, bus in enumerate(buses):
        info = dict(read_key_values(read_text(root, f"/proc/driver/nvidia/gpus/{bus}/information") or ""))
        gpus.append(
            NvidiaGpu(
                index=index, name=info.get("Model", "NVIDIA GPU"), driver=driver, bus=bus, source="procfs"
            )
        )
    return gpus


def probe_nvidia(root: Path = Path("/")) -> tuple[NvidiaGpu, ...]:
    """Discrete NVIDIA GPUs of the device under ``root`` (NVML only for the running machine)."""
    if root == Path("/"):
        found = probe_nvml()
        if found:
            return tuple(found)
    return tuple(probe_procfs(root))


def nvml_stats() -> list[dict[str, Any]] | None:
    """Live use per GPU for health (utilisation %, memory, temperature), or None without NVML."""

    def use(nvml: Any, index: int, handle: Any) -> dict[str, Any]:
        util = _call(nvml.nvmlDeviceGetUtilizationRates, handle)
        mem = _call(nvml.nvmlDeviceGetMemoryInfo, handle)
        return {
            "index": index,
            "name": _text(_call(nvml.nvmlDeviceGetName, handle)),
            "utilization_percent": None if util is None else float(util.gpu),
            "memory_used_mb": None if mem is None else int(mem.used) // (1 << 20),
            "memory_total_mb": None if mem is None else int(mem.total) // (1 << 20),
            "temperature_c": _call(nvml.nvmlDeviceGetTemperature, handle, 0),
        }

    return _with_nvml(use)
