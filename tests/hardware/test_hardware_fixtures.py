"""Detection, decoded fields and chosen profile for every captured device tree in tests/fixtures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.hardware import Hardware, Runtimes, RuntimeStatus, probe_hardware
from agent.profiles import load_profiles, select

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# Runtimes fixed for the profile choice, so the result does not depend on this machine's wheels.
CPU_ONLY = Runtimes(
    (
        RuntimeStatus("numpy", True),
        RuntimeStatus("onnx", True, providers=("CPUExecutionProvider",)),
        RuntimeStatus("tflite", True),
        RuntimeStatus("tensorrt", False, problem="not installed"),
        RuntimeStatus("katago", False, problem="not found"),
    )
)


@dataclass(frozen=True)
class Expect:
    kind: str
    model: str
    memory_mb: int
    arch: str
    cores: int
    features: set[str]
    clusters: list[tuple[int, int]]  # (MHz, cores), fastest first
    profile: str
    extra: dict[str, Any] = field(default_factory=dict)


EXPECTED: dict[str, Expect] = {
    "raspberry-pi-3b": Expect(
        "raspberry-pi",
        "Raspberry Pi 3 Model B Rev 1.2",
        922,
        "aarch64",
        4,
        {"neon"},
        [(1200, 4)],
        "raspberry-pi-3",
        {"pi": ("a02082", "3B", "BCM2837", 1024, "Sony UK", 2), "core": "Cortex-A53"},
    ),
    "raspberry-pi-4b-4gb": Expect(
        "raspberry-pi",
        "Raspberry Pi 4 Model B Rev 1.1",
        3793,
        "aarch64",
        4,
        {"neon"},
        [(1500, 4)],
        "raspberry-pi-4",
        {"pi": ("c03111", "4B", "BCM2711", 4096, "Sony UK", 1), "core": "Cortex-A72"},
    ),
    "raspberry-pi-5-8gb": Expect(
        "raspberry-pi",
        "Raspberry Pi 5 Model B Rev 1.0",
        8052,
        "aarch64",
        4,
        {"neon", "fp16", "dotprod"},
        [(2400, 4)],
        "raspberry-pi-5",
        {"pi": ("d04170", "5", "BCM2712", 8192, "Sony UK", 0), "core": "Cortex-A76"},
    ),
    "raspberry-pi-zero-2w": Expect(
        "raspberry-pi",
        "Raspberry Pi Zero 2 W Rev 1.0",
        429,
        "aarch64",
        4,
        {"neon"},
        [(1000, 4)],
        "raspberry-pi-zero-2",
        {"pi": ("902120", "Zero 2 W", "BCM2837", 512, "Sony UK", 0), "core": "Cortex-A53"},
    ),
    "jetson-nano": Expect(
        "jetson",
        "NVIDIA Jetson Nano Developer Kit",
        3964,
        "aarch64",
        4,
        {"neon"},
        [(1479, 4)],
        "jetson-nano",
        {"jetson": ("p3448-0000", "nano", "tegra210", "32.7.6", "4.6.6", "5.3"), "core": "Cortex-A57"},
    ),
    "jetson-xavier-nx": Expect(
        "jetson",
        "NVIDIA Jetson Xavier NX Developer Kit",
        7764,
        "aarch64",
        6,
        {"neon", "fp16"},
        [(1907, 6)],
        "jetson-xavier",
        {
            "jetson": ("p3668-0000", "xavier-nx", "tegra194", "35.4.1", "5.1.2", "7.2"),
            "core": "NVIDIA Carmel",
        },
    ),
    "jetson-orin-nano-devkit": Expect(
        "jetson",
        "NVIDIA Jetson Orin Nano Developer Kit",
        7620,
        "aarch64",
        6,
        {"neon", "fp16", "dotprod"},
        [(1510, 6)],
        "jetson-orin-nano-nx",
        {
            "jetson": ("p3767-0005", "orin-nx-nano", "tegra234", "36.4.3", "6.2", "8.7"),
            "core": "Cortex-A78AE",
        },
    ),
    "jetson-agx-orin": Expect(
        "jetson",
        "NVIDIA Jetson AGX Orin Developer Kit",
        62827,
        "aarch64",
        12,
        {"neon", "fp16", "dotprod"},
        [(2202, 12)],
        "jetson-agx-orin",
        {"jetson": ("p3701-0005", "agx-orin", "tegra234", "35.4.1", "5.1.2", "8.7"), "core": "Cortex-A78AE"},
    ),
    "android-galaxy-s9": Expect(
        "android",
        "samsung SM-G960U",
        3626,
        "aarch64",
        8,
        {"neon", "fp16"},
        [(2803, 4), (1766, 4)],
        "android-arm64",
        {"android": ("sdm845", 26, "8.0.0", True)},
    ),
    "x86-64-avx512-xeon": Expect(
        "x86_64",
        "Intel(R) Xeon(R) Platinum 8275CL CPU @ 3.00GHz",
        7750,
        "x86_64",
        4,
        {"avx2", "avx512", "vnni"},
        [],
        "x86-64",
    ),
    "x86-64-avx2-laptop": Expect(
        "x86_64",
        "Intel(R) Core(TM) i5-8250U CPU @ 1.60GHz",
        15842,
        "x86_64",
        8,
        {"avx2"},
        [(3400, 8)],
        "x86-64",
    ),
    "x86-64-nvidia-desktop": Expect(
        "x86_64",
        "AMD Ryzen 7 5800X 8-Core Processor",
        32032,
        "x86_64",
        16,
        {"avx2"},
        [(4850, 16)],
        "x86-64-nvidia",
        {"gpu": ("NVIDIA GeForce RTX 3060", "535.129.03")},
    ),
    "arm64-rock-5b": Expect(
        "arm64",
        "Radxa ROCK 5B",
        7741,
        "aarch64",
        8,
        {"neon", "fp16", "dotprod"},
        [(2352, 4), (1800, 4)],
        "arm64",
    ),
}


def test_fixtures__every_device_tree_has_an_expectation_and_a_readme() -> None:
    trees = {p.name for p in FIXTURES.iterdir() if p.is_dir()}
    assert trees == set(EXPECTED)
    assert len(trees) >= 10
    for name in trees:
        readme = (FIXTURES / name / "README.md").read_text()
        assert "Sources" in readme, name  # each README says where the facts come from


@pytest.fixture(scope="module")
def detected() -> dict[str, Hardware]:
    return {name: probe_hardware(FIXTURES / name, runtimes=CPU_ONLY) for name in EXPECTED}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture__detection(name: str, detected: dict[str, Hardware]) -> None:
    hw, want = detected[name], EXPECTED[name]
    assert hw.kind == want.kind
    assert hw.model == want.model
    assert hw.memory_mb == want.memory_mb
    assert hw.cpu.arch == want.arch
    assert hw.cpu.cores == want.cores
    assert set(hw.cpu.features) == want.features
    assert [(c.max_freq_mhz, len(c.cpus)) for c in hw.cpu.clusters] == want.clusters
    if "core" in want.extra:
        assert hw.cpu.model == f"{want.cores}x {want.extra['core']}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture__decoded_fields(name: str, detected: dict[str, Hardware]) -> None:
    hw, want = detected[name], EXPECTED[name]
    if "pi" in want.extra:
        code, type_name, soc, mem, maker, rev = want.extra["pi"]
        assert hw.raspberry_pi is not None and hw.raspberry_pi.revision is not None
        r = hw.raspberry_pi.revision
        assert (r.hex, r.type_name, r.processor, r.memory_mb, r.manufacturer, r.revision) == (
            code,
            type_name,
            soc,
            mem,
            maker,
            rev,
        )
        assert r.new_style
    else:
        assert hw.raspberry_pi is None
    if "jetson" in want.extra:
        part, family, soc, l4t, jetpack, cuda = want.extra["jetson"]
        j = hw.jetson
        assert j is not None
        assert (j.part_number, j.family, j.soc, j.l4t, j.jetpack, j.cuda_capability) == (
            part,
            family,
            soc,
            l4t,
            jetpack,
            cuda,
        )
    else:
        assert hw.jetson is None
    if "android" in want.extra:
        soc, sdk, release, termux = want.extra["android"]
        a = hw.android
        assert a is not None
        assert (a.soc, a.sdk, a.release, a.termux) == (soc, sdk, release, termux)
        assert a.abis[0] == "arm64-v8a"
    else:
        assert hw.android is None
    if "gpu" in want.extra:
        assert [(g.name, g.driver) for g in hw.nvidia_gpus] == [want.extra["gpu"]]
    else:
        assert hw.nvidia_gpus == ()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture__chosen_profile(name: str, detected: dict[str, Hardware]) -> None:
    profile, reasons = select(detected[name], profiles=load_profiles())
    assert profile.name == EXPECTED[name].profile
    assert reasons[0].startswith(f"profile {profile.name} matched: kind={EXPECTED[name].kind}")
    assert any("usable, chosen" in r for r in reasons)


def test_fixture__to_dict_is_json(detected: dict[str, Hardware]) -> None:
    import json

    for hw in detected.values():
        data = json.loads(json.dumps(hw.to_dict()))
        assert data["kind"] == hw.kind and data["memory_mb"] == hw.memory_mb
