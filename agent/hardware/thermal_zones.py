"""Thermal zones: ``/sys/class/thermal/thermal_zone*/{type,temp}``.

``temp`` is in millidegrees Celsius (``52345`` is 52.345 °C). Zone types differ per board:
``cpu-thermal`` on a Raspberry Pi; ``cpu-thermal``/``gpu-thermal``/``tj-thermal``/... on Orin;
``CPU-therm``/``GPU-therm``/``AO-therm`` on a Jetson Nano; ``x86_pkg_temp``/``acpitz`` on PCs.
Jetson reports an offline sensor as -256 °C (jetson_stats ``TEMPERATURE_OFFLINE = -256``); such
readings, and unreadable ``temp`` files, are reported as None, never as a number.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.hardware._files import read_int, read_text, under

THERMAL_DIR = "/sys/class/thermal"
OFFLINE_BELOW_C = -200.0


@dataclass(frozen=True)
class ThermalZone:
    index: int
    name: str  # the zone "type"
    temp_c: float | None


def _zone_index(path: Path) -> int:
    match = re.search(r"(\d+)$", path.name)
    return int(match.group(1)) if match else -1


def read_zone(root: Path, index: int) -> ThermalZone:
    base = f"{THERMAL_DIR}/thermal_zone{index}"
    name = (read_text(root, f"{base}/type") or f"thermal_zone{index}").strip()
    milli = read_int(root, f"{base}/temp")
    temp = None if milli is None else milli / 1000.0
    if temp is not None and temp < OFFLINE_BELOW_C:
        temp = None
    return ThermalZone(index=index, name=name, temp_c=temp)


def probe_thermal_zones(root: Path = Path("/")) -> tuple[ThermalZone, ...]:
    """Every thermal zone under ``root`` with its current temperature."""
    try:
        entries = sorted(under(root, THERMAL_DIR).glob("thermal_zone*"), key=_zone_index)
    except OSError:
        return ()
    return tuple(read_zone(root, _zone_index(p)) for p in entries if _zone_index(p) >= 0)


def select_zones(zones: Iterable[ThermalZone], patterns: Iterable[str]) -> list[ThermalZone]:
    """Zones whose type matches one of ``patterns`` (case-insensitive globs); all when none given."""
    pats = [p.lower() for p in patterns]
    zones = list(zones)
    if not pats:
        return zones
    return [z for z in zones if any(fnmatch.fnmatchcase(z.name.lower(), p) for p in pats)]
