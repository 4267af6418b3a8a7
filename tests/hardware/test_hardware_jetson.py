"""Jetson: nv_tegra_release parsing, L4T -> JetPack, module part numbers, GPU load, power mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.hardware.jetson import (
    jetpack_for,
    parse_nv_tegra_release,
    parse_nvpmodel_query,
    probe_jetson,
    read_gpu_load,
    read_power_mode,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.mark.parametrize(
    ("line", "l4t"),
    [
        (
            "# R32 (release), REVISION: 7.6, GCID: 38171779, BOARD: t210ref, EABI: aarch64, "
            "DATE: Tue Nov  5 07:46:14 UTC 2024",
            "32.7.6",
        ),
        (
            "# R35 (release), REVISION: 1.0, GCID: 31346300, BOARD: t186ref, EABI: aarch64, "
            "DATE: Thu Aug 25 18:41:45 UTC 2022",
            "35.1.0",
        ),
        ("# R32 (release), REVISION: 5, GCID: 1, BOARD: t210ref, EABI: aarch64, DATE: x", "32.5.0"),
        (
            "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 "
            "01:49:37 UTC 2025\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n",
            "36.4.3",
        ),
        ("garbage", None),
    ],
)
def test_parse_nv_tegra_release__real_lines(line: str, l4t: str | None) -> None:
    assert parse_nv_tegra_release(line) == l4t


@pytest.mark.parametrize(
    ("l4t", "jetpack"),
    [
        ("32.7.6", "4.6.6"),
        ("35.4.1", "5.1.2"),
        ("35.5.0", "5.1.3"),
        ("36.3.0", "6.0"),
        ("36.4.0", "6.1"),
        ("36.4.3", "6.2"),
        ("36.4.4", "6.2.1"),
        ("36.4.7", "6.2.1"),
        ("36.5.0", "6.2.2"),
        ("38.2.0", "7.0"),
        ("35.1.0", "5.0.2"),
        ("36.4.5", "6.2.1"),  # an unlisted patch release maps to the closest lower listed one
        ("99.1.0", None),
        (None, None),
    ],
)
def test_jetpack_for__table(l4t: str | None, jetpack: str | None) -> None:
    assert jetpack_for(l4t) == jetpack


@pytest.mark.parametrize(
    ("device", "load_percent", "power_mode"),
    [
        ("jetson-nano", 26.8, "MAXN"),  # /sys/devices/gpu.0/load = 268 per-mille
        ("jetson-orin-nano-devkit", 84.0, "15W"),  # /sys/devices/platform/gpu.0/load = 840
        ("jetson-agx-orin", 0.0, "MAXN"),
        ("jetson-xavier-nx", 0.0, "MODE_20W_6CORE"),
    ],
)
def test_gpu_load_and_power_mode__fixtures(device: str, load_percent: float, power_mode: str) -> None:
    assert read_gpu_load(FIXTURES / device) == pytest.approx(load_percent)
    assert read_power_mode(FIXTURES / device) == power_mode


def test_gpu_load__absent_off_a_jetson() -> None:
    assert read_gpu_load(FIXTURES / "raspberry-pi-5-8gb") is None
    assert read_power_mode(FIXTURES / "raspberry-pi-5-8gb") is None


def _tree(root: Path, compatible: list[str], model: str | None = None, dts: str | None = None) -> Path:
    dt = root / "proc" / "device-tree"
    dt.mkdir(parents=True)
    (dt / "compatible").write_bytes(("\0".join(compatible) + "\0").encode())
    if model:
        (dt / "model").write_bytes((model + "\0\0").encode())  # some boards add two NULs
    if dts:
        (dt / "nvidia,dtsfilename").write_bytes((dts + "\0").encode())
    return root


def test_probe_jetson__orin_nano_super_suffix(tmp_path: Path) -> None:
    """The ``-super`` suffix has broken parsers (device notes §3.2)."""
    root = _tree(
        tmp_path,
        ["nvidia,p3768-0000+p3767-0005-super", "nvidia,tegra234"],
        "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",
    )
    j = probe_jetson(root)
    assert j is not None
    assert (j.part_number, j.family, j.soc, j.cuda_capability) == (
        "p3767-0005",
        "orin-nx-nano",
        "tegra234",
        "8.7",
    )
    assert j.model == "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"
    assert j.l4t is None and j.jetpack is None  # no nv_tegra_release in this tree


def test_probe_jetson__part_from_dtsfilename(tmp_path: Path) -> None:
    root = _tree(tmp_path, ["nvidia,tegra234"], dts="tegra234-p3701-0000-p3737-0000")
    j = probe_jetson(root)
    assert j is not None and j.part_number == "p3701-0000" and j.module == "Jetson AGX Orin"


def test_probe_jetson__not_a_jetson(tmp_path: Path) -> None:
    assert probe_jetson(_tree(tmp_path, ["raspberrypi,5-model-b", "brcm,bcm2712"])) is None


def test_parse_nvpmodel_query__jtop_format() -> None:
    assert parse_nvpmodel_query("NV Power Mode: MAXN_SUPER\n2\n") == "MAXN_SUPER"
    assert parse_nvpmodel_query("NVPM WARN: fan mode is not set!\nNV Power Mode: 15W\n0\n") == "15W"
    assert parse_nvpmodel_query("nvpmodel: command failed") is None
