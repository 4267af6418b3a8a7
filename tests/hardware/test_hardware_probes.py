"""CPU, memory, Android and NVIDIA probes on small hand-made trees (edge cases the fixtures lack)."""

from __future__ import annotations

from pathlib import Path

from agent.hardware import probe_hardware
from agent.hardware.android import parse_getprop, probe_android
from agent.hardware.cpu import probe_cpu
from agent.hardware.memory import probe_memory
from agent.hardware.nvidia import probe_procfs
from agent.hardware.thermal_zones import probe_thermal_zones, select_zones

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

ARMV7_ON_PI3 = """processor\t: 0
model name\t: ARMv7 Processor rev 4 (v7l)
BogoMIPS\t: 38.40
Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32
CPU implementer\t: 0x41
CPU architecture: 7
CPU variant\t: 0x0
CPU part\t: 0xd03
CPU revision\t: 4

Hardware\t: BCM2835
Revision\t: a02082
Serial\t\t: 00000000c0ffee03
Model\t\t: Raspberry Pi 3 Model B Rev 1.2
"""


def _write(root: Path, path: str, text: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def test_probe_cpu__32bit_raspberry_pi_os(tmp_path: Path) -> None:
    """A Pi 3 on 32-bit Raspberry Pi OS: a 32-bit ARM kernel, NEON, model from cpuinfo (no device tree here)."""
    _write(tmp_path, "/proc/cpuinfo", ARMV7_ON_PI3)
    cpu = probe_cpu(tmp_path)
    assert cpu.arch == "arm"
    assert cpu.features == {"neon"}
    assert cpu.model == "1x Cortex-A53"
    assert cpu.hardware == "BCM2835"
    hw = probe_hardware(tmp_path)
    assert hw.kind == "raspberry-pi"
    assert hw.model == "Raspberry Pi 3 Model B Rev 1.2"
    assert hw.raspberry_pi is not None and hw.raspberry_pi.type_name == "3B"


def test_probe_cpu__empty_root_is_unknown_not_a_crash(tmp_path: Path) -> None:
    cpu = probe_cpu(tmp_path)
    assert (cpu.arch, cpu.cores, cpu.model, cpu.clusters) == ("unknown", 0, None, ())
    hw = probe_hardware(tmp_path)
    assert hw.kind == "other" and hw.memory is None and hw.thermal_zones == ()


def test_probe_cpu__x86_per_core_model_number_is_not_the_board_model(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "/proc/cpuinfo",
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\nmodel name\t: Intel(R) Xeon(R)  CPU\n"
        "flags\t\t: fpu lm avx2 avx512f avx512_vnni avx512_fp16\n",
    )
    cpu = probe_cpu(tmp_path)
    assert cpu.arch == "x86_64" and cpu.model == "Intel(R) Xeon(R) CPU"
    assert cpu.features == {"avx2", "avx512", "vnni", "fp16"}


def test_probe_memory__values_in_mb(tmp_path: Path) -> None:
    _write(tmp_path, "/proc/meminfo", "MemTotal:        948304 kB\nMemAvailable:    600000 kB\n")
    mem = probe_memory(tmp_path)
    assert mem is not None and (mem.total_mb, mem.available_mb, mem.swap_total_mb) == (926, 585, None)


def test_parse_getprop__output_format() -> None:
    out = "[ro.product.model]: [Pixel 7]\n[ro.soc.model]: [Tensor G2]\n[ro.build.version.sdk]: [34]\nnoise\n"
    assert parse_getprop(out) == {
        "ro.product.model": "Pixel 7",
        "ro.soc.model": "Tensor G2",
        "ro.build.version.sdk": "34",
    }


def test_probe_android__soc_model_preferred_over_board_platform(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "/system/build.prop",
        "ro.product.model=Pixel 7\nro.product.manufacturer=Google\nro.board.platform=gs201\n"
        "ro.soc.manufacturer=Google\nro.soc.model=Tensor G2\nro.build.version.sdk=34\n",
    )
    a = probe_android(tmp_path)
    assert a is not None
    assert (a.model, a.soc, a.sdk, a.termux) == ("Google Pixel 7", "Tensor G2", 34, False)


def test_probe_nvidia__procfs_without_nvml() -> None:
    gpus = probe_procfs(FIXTURES / "x86-64-nvidia-desktop")
    assert [(g.index, g.name, g.bus, g.driver, g.source) for g in gpus] == [
        (0, "NVIDIA GeForce RTX 3060", "0000:01:00.0", "535.129.03", "procfs")
    ]


def test_thermal_zones__offline_jetson_sensors_are_none() -> None:
    zones = probe_thermal_zones(FIXTURES / "jetson-agx-orin")
    by_name = {z.name: z.temp_c for z in zones}
    assert by_name["cpu-thermal"] == 44.562
    assert by_name["tj-thermal"] == 44.343
    assert by_name["gpu-thermal"] is None  # -256 C: sensor offline
    picked = select_zones(zones, ["cpu-therm*", "gpu-therm*", "tj-therm*"])
    assert [z.name for z in picked] == ["cpu-thermal", "gpu-thermal", "tj-thermal"]
    nano = select_zones(probe_thermal_zones(FIXTURES / "jetson-nano"), ["cpu-therm*", "gpu-therm*"])
    assert [(z.name, z.temp_c) for z in nano] == [
        ("CPU-therm", 41.5),
        ("GPU-therm", 39.0),
    ]  # case-insensitive
