"""CPU probe: architecture, model, cores, big.LITTLE clusters and SIMD features.

Everything comes from files below ``root`` so that a captured device tree reproduces the device:

* ``/proc/cpuinfo`` gives the architecture (x86 kernels list ``vendor_id``/``flags``; arm64
  kernels list ``Features`` with ``asimd``; a 32-bit ARM kernel lists ``neon``/``vfp``), the
  model (``model name`` on x86; ``CPU implementer``/``CPU part`` on ARM, mapped below) and the
  feature flags.
* ``/sys/devices/system/cpu/cpu*/cpufreq/cpuinfo_max_freq`` (kHz) groups cores into clusters,
  as pytorch/cpuinfo ``src/linux/processors.c`` does; a big.LITTLE SoC shows two or three groups.
  ``cpuinfo_max_freq`` stays readable on Android devices that deny ``scaling_max_freq``
  (termux-packages#29844).

The returned features are normalised names that matter for neural-network inference:

==========  =========================================================================
feature     source flag(s)
==========  =========================================================================
avx2        x86 ``avx2``
avx512      x86 ``avx512f``
vnni        x86 ``avx512_vnni`` or ``avx_vnni`` (int8 dot products)
neon        arm64 ``asimd``; 32-bit ARM ``neon``
dotprod     arm64 ``asimddp`` (SDOT/UDOT, ARMv8.2+, e.g. Cortex-A76/A78, not A53/A72)
fp16        arm64 ``asimdhp`` (half-precision arithmetic); x86 ``avx512_fp16``
i8mm        arm64 ``i8mm``
bf16        arm64 ``bf16``; x86 ``avx512_bf16``
sve         arm64 ``sve``
==========  =========================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from agent.hardware._files import read_int, read_key_values, read_text

#: ARM core names by (implementer, part). Source: Linux ``arch/arm64/include/asm/cputype.h``
#: and pytorch/cpuinfo ``src/arm/uarch.c``. The A53/A57/A72/A76/A78AE values are from the device
#: notes' "(unverified here)" list, but they agree with the cpuinfo dumps of the devices in
#: ``tests/fixtures`` (Pi 3 = A53 0xd03, Pi 4 = A72 0xd08, Pi 5 = A76 0xd0b, Jetson Nano = A57
#: 0xd07, Orin = A78AE 0xd42).
ARM_CORES: dict[tuple[int, int], str] = {
    (0x41, 0xD03): "Cortex-A53",
    (0x41, 0xD04): "Cortex-A35",
    (0x41, 0xD05): "Cortex-A55",
    (0x41, 0xD07): "Cortex-A57",
    (0x41, 0xD08): "Cortex-A72",
    (0x41, 0xD09): "Cortex-A73",
    (0x41, 0xD0A): "Cortex-A75",
    (0x41, 0xD0B): "Cortex-A76",
    (0x41, 0xD0C): "Neoverse-N1",
    (0x41, 0xD0D): "Cortex-A77",
    (0x41, 0xD40): "Neoverse-V1",
    (0x41, 0xD41): "Cortex-A78",
    (0x41, 0xD42): "Cortex-A78AE",
    (0x41, 0xD44): "Cortex-X1",
    (0x41, 0xD46): "Cortex-A510",
    (0x41, 0xD47): "Cortex-A710",
    (0x41, 0xD48): "Cortex-X2",
    (0x41, 0xD49): "Neoverse-N2",
    (0x41, 0xD4B): "Cortex-A78C",
    (0x41, 0xD4C): "Cortex-X1C",
    (0x41, 0xD4D): "Cortex-A715",
    (0x41, 0xD4E): "Cortex-X3",
    (0x41, 0xD4F): "Neoverse-V2",
    (0x41, 0xD80): "Cortex-A520",
    (0x41, 0xD81): "Cortex-A720",
    (0x41, 0xD82): "Cortex-X4",
    (0x41, 0xD85): "Cortex-X925",
    (0x41, 0xD87): "Cortex-A725",
    (0x4E, 0x004): "NVIDIA Carmel",  # Jetson Xavier NX / AGX Xavier
    (0x51, 0x802): "Kryo 385 Gold",  # Snapdragon 845 big cores (Cortex-A75 based)
    (0x51, 0x803): "Kryo 385 Silver",  # Snapdragon 845 LITTLE cores (Cortex-A55 based)
    (0x61, 0x022): "Apple M1 Icestorm",
    (0x61, 0x023): "Apple M1 Firestorm",
}

_X86_FEATURES = {
    "avx2": ("avx2",),
    "avx512": ("avx512f",),
    "vnni": ("avx512_vnni", "avx_vnni"),
    "fp16": ("avx512_fp16",),
    "bf16": ("avx512_bf16",),
}
_ARM_FEATURES = {
    "neon": ("asimd", "neon"),
    "dotprod": ("asimddp",),
    "fp16": ("asimdhp",),
    "i8mm": ("i8mm",),
    "bf16": ("bf16",),
    "sve": ("sve",),
}


@dataclass(frozen=True)
class CpuCluster:
    """Cores sharing one maximum frequency (one cluster of a big.LITTLE SoC)."""

    cpus: tuple[int, ...]
    max_freq_mhz: int
    core: str | None = None


@dataclass(frozen=True)
class CpuInfo:
    arch: str  # "x86_64", "i686", "aarch64", "arm" (any 32-bit ARM kernel) or "unknown"
    model: str | None
    cores: int
    features: frozenset[str] = field(default_factory=frozenset)
    clusters: tuple[CpuCluster, ...] = ()
    hardware: str | None = None  # the cpuinfo "Hardware" line (Qualcomm SoC name, "BCM2835" on a Pi)

    @property
    def big_little(self) -> bool:
        return len(self.clusters) > 1


def _split_processors(text: str) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Per-processor blocks and the global trailer (Hardware, Revision, Model, Serial)."""
    blocks: list[dict[str, str]] = []
    trailer: dict[str, str] = {}
    current: dict[str, str] | None = None
    for key, value in read_key_values(text):
        lower = key.lower()
        if lower == "processor" and value.isdigit():
            current = {}
            blocks.append(current)
            continue
        # Case matters: x86 blocks carry a per-core "model" (a number); the Pi trailer has "Model".
        if key in ("Hardware", "Revision", "Serial", "Model") or current is None:
            trailer.setdefault(lower, value)
            continue
        current.setdefault(lower, value)
    return blocks, trailer


def _arch(blocks: list[dict[str, str]]) -> str:
    if not blocks:
        return "unknown"
    first = blocks[0]
    if "vendor_id" in first or "flags" in first:
        return "x86_64" if "lm" in first.get("flags", "").split() else "i686"
    feats = first.get("features", "").split()
    if "asimd" in feats or "fp" in feats:
        return "aarch64"
    if "neon" in feats or "vfp" in feats or "thumb" in feats:
        return "arm"
    return "unknown"


def _arm_core(block: dict[str, str]) -> str | None:
    try:
        key = (int(block["cpu implementer"], 16), int(block["cpu part"], 16))
    except (KeyError, ValueError):
        return None
    return ARM_CORES.get(key, f"ARM core {key[0]:#x}/{key[1]:#05x}")


def _features(arch: str, blocks: list[dict[str, str]]) -> frozenset[str]:
    flags: set[str] = set()
    for block in blocks:
        flags.update(block.get("flags", "").split())
        flags.update(block.get("features", "").split())
    table = _X86_FEATURES if arch in ("x86_64", "i686") else _ARM_FEATURES
    return frozenset(name for name, sources in table.items() if any(s in flags for s in sources))


def _clusters(root: Path, cores: int, core_names: dict[int, str | None]) -> tuple[CpuCluster, ...]:
    groups: dict[int, list[int]] = {}
    for cpu in range(cores):
        khz = read_int(root, f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq")
        if khz is None:
            continue
        groups.setdefault(khz, []).append(cpu)
    clusters = []
    for khz, cpus in sorted(groups.items(), key=lambda item: -item[0]):
        names = {core_names.get(c) for c in cpus} - {None}
        clusters.append(CpuCluster(tuple(cpus), round(khz / 1000), names.pop() if len(names) == 1 else None))
    return tuple(clusters)


def _model(arch: str, blocks: list[dict[str, str]], core_names: dict[int, str | None]) -> str | None:
    if arch in ("x86_64", "i686"):
        name = blocks[0].get("model name")
        return re.sub(r"\s+", " ", name).strip() if name else None
    counts: dict[str, int] = {}
    for cpu in sorted(core_names):
        name = core_names[cpu]
        if name:
            counts[name] = counts.get(name, 0) + 1
    if not counts:
        return blocks[0].get("model name") if blocks else None
    return " + ".join(f"{n}x {name}" for name, n in counts.items())


def probe_cpu(root: Path = Path("/")) -> CpuInfo:
    """CPU facts of the device whose files are under ``root``."""
    text = read_text(root, "/proc/cpuinfo") or ""
    blocks, trailer = _split_processors(text)
    arch = _arch(blocks)
    core_names: dict[int, str | None] = {}
    if arch in ("aarch64", "arm"):
        core_names = {i: _arm_core(b) for i, b in enumerate(blocks)}
    cores = len(blocks)
    return CpuInfo(
        arch=arch,
        model=_model(arch, blocks, core_names) if blocks else None,
        cores=cores,
        features=_features(arch, blocks),
        clusters=_clusters(root, cores, core_names),
        hardware=trailer.get("hardware"),
    )


def cpuinfo_trailer(root: Path = Path("/")) -> dict[str, str]:
    """The global ``/proc/cpuinfo`` fields (``hardware``, ``revision``, ``serial``, ``model``)."""
    return _split_processors(read_text(root, "/proc/cpuinfo") or "")[1]
