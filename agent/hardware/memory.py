"""Memory probe: total/available RAM and swap from ``/proc/meminfo`` (values in kB)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.hardware._files import read_key_values, read_text


@dataclass(frozen=True)
class MemoryInfo:
    total_mb: int
    available_mb: int | None
    swap_total_mb: int | None


def _kb(value: str) -> int | None:
    parts = value.split()
    try:
        return int(parts[0])
    except (ValueError, IndexError):
        return None


def probe_memory(root: Path = Path("/")) -> MemoryInfo | None:
    """RAM of the device under ``root``; None when ``/proc/meminfo`` is missing.

    ``MemTotal`` is what the kernel manages, a little below the marketed size (a Pi 4 "4 GB"
    reports about 3.7-3.8 GiB; a Jetson shares it with the GPU), so profile rules compare with
    thresholds such as ``min_memory_mb = 3000``, never with the marketed size.
    """
    text = read_text(root, "/proc/meminfo")
    if text is None:
        return None
    values = {k: _kb(v) for k, v in read_key_values(text)}
    total = values.get("MemTotal")
    if total is None:
        return None
    avail = values.get("MemAvailable")
    swap = values.get("SwapTotal")
    return MemoryInfo(
        total_mb=total // 1024,
        available_mb=None if avail is None else avail // 1024,
        swap_total_mb=None if swap is None else swap // 1024,
    )
