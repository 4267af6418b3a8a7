"""NVIDIA Jetson probe: module, L4T release, JetPack version, CUDA capability, GPU load, power mode.

Sources (``../shared/docs/device-and-fleet-notes.md`` §3.2):

* ``/proc/device-tree/compatible`` (NUL-separated), e.g.
  ``nvidia,p3768-0000+p3767-0005`` ``nvidia,tegra234`` on an Orin Nano devkit: the carrier and
  module part numbers (``p3767-0005`` is the module) and, last, the SoC.
  ``/proc/device-tree/model`` is the marketing name (``NVIDIA Jetson AGX Orin Developer Kit``).
  ``/proc/device-tree/nvidia,dtsfilename`` (``tegra234-p3701-0000-p3737-0000``) is a fallback
  for the part number.
* ``/etc/nv_tegra_release``, first line
  ``# R36 (release), REVISION: 4.3, GCID: ..., BOARD: generic, EABI: aarch64, DATE: ...``; the
  old R32 form may be ``REVISION: 5`` with no minor. Parsed with a regex (jetson_stats strips
  character sets with ``lstrip("# R")``, which is fragile).
* GPU load: ``/sys/devices/gpu.0/load`` (Nano, AGX Xavier) or
  ``/sys/devices/platform/gpu.0/load`` (Xavier NX, Orin), in per-mille (jetson_stats
  ``jtop/core/gpu.py``; Frigate divides by 10).
* Power mode: ``nvpmodel -q`` prints ``NV Power Mode: MAXN`` (jtop ``core/nvpmodel.py``); the
  mode id is kept in ``/var/lib/nvpmodel/status`` (``pmode:0000``) and named in
  ``/etc/nvpmodel.conf`` (``< POWER_MODEL ID=0 NAME=MAXN >``), which is what we read from files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from agent.hardware._files import read_dt_strings, read_int, read_text

#: L4T release -> JetPack. Source: jetson_stats ``jtop/core/jetson_variables.py::NVIDIA_JETPACK``
#: (subset, most recent releases per JetPack line).
L4T_TO_JETPACK: dict[str, str] = {
    "32.4.3": "4.4",
    "32.4.4": "4.4.1",
    "32.5.0": "4.5",
    "32.5.1": "4.5.1",
    "32.5.2": "4.5.1",
    "32.6.1": "4.6",
    "32.7.1": "4.6.1",
    "32.7.2": "4.6.2",
    "32.7.3": "4.6.3",
    "32.7.4": "4.6.4",
    "32.7.5": "4.6.5",
    "32.7.6": "4.6.6",
    "35.1.0": "5.0.2",
    "35.2.1": "5.1",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "36.2.0": "6.0 DP",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
    "36.4.7": "6.2.1",
    "36.5.0": "6.2.2",
    "38.2.0": "7.0",
    "38.4.0": "7.1",
    "39.2.0": "7.2",
}

#: SoC -> CUDA compute capability. Source: jetson_stats ``jetson_variables.py::CUDA_TABLE``.
SOC_CUDA_CAPABILITY: dict[str, str] = {
    "tegra124": "3.2",
    "tegra210": "5.3",
    "tegra186": "6.2",
    "tegra194": "7.2",
    "tegra234": "8.7",
    "tegra264": "11.0",
}

#: Module part number -> module name. Source: jetson_stats ``MODULE_NAME_TABLE`` and Adafruit
#: PlatformDetect ``constants/boards.py::_JETSON_IDS``.
JETSON_MODULES: dict[str, str] = {
    "p3767-0000": "Jetson Orin NX 16GB",
    "p3767-0001": "Jetson Orin NX 8GB",
    "p3767-0003": "Jetson Orin Nano 8GB",
    "p3767-0004": "Jetson Orin Nano 4GB",
    "p3767-0005": "Jetson Orin Nano (Developer Kit)",
    "p3701-0000": "Jetson AGX Orin",
    "p3701-0004": "Jetson AGX Orin 32GB",
    "p3701-0005": "Jetson AGX Orin 64GB",
    "p3701-0008": "Jetson AGX Orin Industrial",
    "p3668-0000": "Jetson Xavier NX (Developer Kit)",
    "p3668-0001": "Jetson Xavier NX",
    "p3668-0003": "Jetson Xavier NX 16GB",
    "p2888-0001": "Jetson AGX Xavier 16GB",
    "p2888-0004": "Jetson AGX Xavier 32GB",
    "p2888-0005": "Jetson AGX Xavier 64GB",
    "p2888-0006": "Jetson AGX Xavier 8GB",
    "p2888-0008": "Jetson AGX Xavier Industrial",
    "p3448-0000": "Jetson Nano 4GB (Developer Kit)",
    "p3448-0002": "Jetson Nano 4GB",
    "p3448-0003": "Jetson Nano 2GB",
    "p3636-0001": "Jetson TX2 NX",
    "p3310-1000": "Jetson TX2",
    "p2180-1000": "Jetson TX1",
}

#: Module family used by profile matching (``module_family`` in profiles/*.toml).
_FAMILIES = (
    ("p3767-000", "orin-nx-nano"),
    ("p3701-", "agx-orin"),
    ("p3668-", "xavier-nx"),
    ("p2888-", "agx-xavier"),
    ("p3448-", "nano"),
)

GPU_LOAD_FILES = ("/sys/devices/gpu.0/load", "/sys/devices/platform/gpu.0/load")
_RELEASE_RE = re.compile(r"#\s*R(?P<major>\d+)\s*\(release\),\s*REVISION:\s*(?P<rev>\d+(?:\.\d+)?)")
_PART_RE = re.compile(r"p(\d{4})-(\d{4})")


@dataclass(frozen=True)
class JetsonInfo:
    model: str  # /proc/device-tree/model, or the module name
    module: str | None  # "Jetson Orin Nano (Developer Kit)"
    part_number: str | None  # "p3767-0005"
    family: str | None  # "orin-nx-nano", "agx-orin", "xavier-nx", "agx-xavier", "nano"
    soc: str | None  # "tegra234"
    l4t: str | None  # "36.4.3"
    jetpack: str | None  # "6.2"
    cuda_capability: str | None  # "8.7"
    compatible: tuple[str, ...] = ()


def parse_nv_tegra_release(text: str) -> str | None:
    """``# R36 (release), REVISION: 4.3, ...`` -> ``"36.4.3"``; ``REVISION: 5`` -> ``"32.5.0"``."""
    match = _RELEASE_RE.search(text)
    if not match:
        return None
    parts = match.group("rev").split(".")
    minor, patch = parts[0], parts[1] if len(parts) > 1 else "0"
    return f"{match.group('major')}.{minor}.{patch}"


def jetpack_for(l4t: str | None) -> str | None:
    """JetPack for an L4T release; for an unlisted patch release, the closest lower one listed."""
    if l4t is None:
        return None
    if l4t in L4T_TO_JETPACK:
        return L4T_TO_JETPACK[l4t]

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split("."))

    same_minor = [v for v in L4T_TO_JETPACK if v.rsplit(".", 1)[0] == l4t.rsplit(".", 1)[0]]
    lower = [v for v in same_minor if key(v) <= key(l4t)]
    return L4T_TO_JETPACK[max(lower, key=key)] if lower else None


def _part_number(compatible: list[str], dts: str | None) -> str | None:
    """The module part (p3767/p3701/p3668/p2888/p3448/...), not the carrier board."""
    candidates: list[str] = []
    for entry in compatible:
        candidates.extend(f"p{a}-{b}" for a, b in _PART_RE.findall(entry))
    if dts:
        candidates.extend(f"p{a}-{b}" for a, b in _PART_RE.findall(dts))
    for cand in candidates:
        if cand in JETSON_MODULES:
            return cand
    for cand in candidates:  # unknown revision of a known module (p3701-0008 ...)
        if any(cand.startswith(prefix) for prefix, _ in _FAMILIES):
            return cand
    return None


def probe_jetson(root: Path = Path("/")) -> JetsonInfo | None:
    """Jetson facts, or None when the device under ``root`` is not a Jetson."""
    compatible = read_dt_strings(root, "/proc/device-tree/compatible")
    release_text = read_text(root, "/etc/nv_tegra_release")
    is_tegra = any(c.startswith("nvidia,tegra") or c.startswith("nvidia,jetson") for c in compatible)
    if not is_tegra and release_text is None:
        return None
    models = read_dt_strings(root, "/proc/device-tree/model")
    dts_strings = read_dt_strings(root, "/proc/device-tree/nvidia,dtsfilename")
    dts = dts_strings[0] if dts_strings else None
    part = _part_number(compatible, dts)
    soc = next((c.split(",", 1)[1] for c in reversed(compatible) if c.startswith("nvidia,tegra")), None)
    family = next((fam for prefix, fam in _FAMILIES if part and part.startswith(prefix)), None)
    module = JETSON_MODULES.get(part) if part else None
    l4t = parse_nv_tegra_release(release_text) if release_text else None
    return JetsonInfo(
        model=models[0] if models else (module or "NVIDIA Jetson"),
        module=module,
        part_number=part,
        family=family,
        soc=soc,
        l4t=l4t,
        jetpack=jetpack_for(l4t),
        cuda_capability=SOC_CUDA_CAPABILITY.get(soc) if soc else None,
        compatible=tuple(compatible),
    )


def read_gpu_load(root: Path = Path("/")) -> float | None:
    """Jetson GPU load in percent (the sysfs value is per-mille), or None when absent."""
    for path in GPU_LOAD_FILES:
        value = read_int(root, path)
        if value is not None:
            return value / 10.0
    return None


def read_power_mode(root: Path = Path("/")) -> str | None:
    """nvpmodel power mode name (``MAXN``, ``15W`` ...) from its status and config files."""
    status = read_text(root, "/var/lib/nvpmodel/status")
    conf = read_text(root, "/etc/nvpmodel.conf")
    if not status or not conf:
        return None
    match = re.search(r"pmode:\s*(\d+)", status)
    if not match:
        return None
    wanted = int(match.group(1))
    for mode_id, name in re.findall(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)", conf):
        if int(mode_id) == wanted:
            return str(name)
    return None


def parse_nvpmodel_query(text: str) -> str | None:
    """``nvpmodel -q`` output (``NV Power Mode: MAXN`` then the id) -> ``"MAXN"`` (jtop's regex)."""
    match = re.search(r"NV Power Mode:\s*(?P<name>[\w-]+)", text)
    return match.group("name") if match else None
