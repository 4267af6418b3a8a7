"""Profiles: validation (unknown keys rejected), matching rules, overrides, runtime fallbacks."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.hardware import Runtimes, RuntimeStatus, probe_hardware
from agent.hardware.nvidia import NvidiaGpu
from agent.profiles import choose_engine, choose_runtime, load_profile, load_profiles, profiles_dir, select

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
REQUIRED = {
    "raspberry-pi-3",
    "raspberry-pi-4",
    "raspberry-pi-5",
    "raspberry-pi-zero-2",
    "jetson-nano",
    "jetson-xavier",
    "jetson-orin-nano-nx",
    "jetson-agx-orin",
    "android-arm64",
    "x86-64-nvidia",
    "x86-64",
    "arm64",
}


def _runtimes(*available: str, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> Runtimes:
    names = ("numpy", "onnx", "tflite", "tensorrt", "katago")
    return Runtimes(
        tuple(
            RuntimeStatus(
                n,
                n in available,
                providers=providers if n == "onnx" else (),
                problem=None if n in available else f"{n} missing",
            )
            for n in names
        )
    )


def test_profiles__every_device_class_is_shipped_and_valid() -> None:
    profiles = load_profiles()
    assert {p.name for p in profiles} == REQUIRED
    for p in profiles:
        assert p.search.default_visits <= p.search.max_visits
        assert p.thermal.soft_limit_c < p.thermal.hard_limit_c
        assert p.runtimes and p.network.recommended


def _copy_profile(tmp_path: Path, name: str, edit: str | None = None, extra: str = "") -> Path:
    src = (profiles_dir() / f"{name}.toml").read_text()
    if edit:
        old, new = edit.split("=>")
        assert old in src
        src = src.replace(old, new)
    path = tmp_path / f"{name}.toml"
    path.write_text(src + extra)
    return path


@pytest.mark.parametrize(
    ("edit", "extra", "message"),
    [
        (None, "\n[search2]\nthreads = 1\n", "search2"),  # unknown table
        ("threads = 4=>threads = 4\nthreds = 2", "", "search.threds"),  # unknown key (typo)
        ("soft_limit_c = 75.0=>soft_limit_c = 90.0", "", "soft_limit_c 90.0 must be below"),
        ("max_visits = 400=>max_visits = 10", "", "exceeds max_visits"),
        ('runtime = "onnx"=>runtime = "openvino"', "", "runtimes.0.runtime"),
        ('kind = "raspberry-pi"=>kind = "pi"', "", "match.kind"),
        ('name = "raspberry-pi-4"=>name = "pi4"', "", "must equal the file name"),
        ("[network]=>[network", "", "invalid TOML"),
    ],
)
def test_load_profile__invalid_files_are_config_errors(
    tmp_path: Path, edit: str | None, extra: str, message: str
) -> None:
    path = _copy_profile(tmp_path, "raspberry-pi-4", edit, extra)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_profile(path)


def test_select__forced_profile_and_field_overrides() -> None:
    hw = probe_hardware(FIXTURES / "raspberry-pi-4b-4gb", runtimes=_runtimes("numpy", "onnx"))
    profile, reasons = select(hw, {"profile": "arm64", "search": {"threads": 2, "max_visits": 100}})
    assert profile.name == "arm64"
    assert (profile.search.threads, profile.search.max_visits) == (2, 100)
    assert reasons[0].startswith("profile arm64 forced by the config (does not match: kind is raspberry-pi")
    assert "override search.threads = 2" in reasons


def test_select__bad_override_and_unknown_profile_are_config_errors() -> None:
    hw = probe_hardware(FIXTURES / "raspberry-pi-5-8gb")
    with pytest.raises(ConfigError, match=r"search\.threads"):
        select(hw, {"search": {"threads": 0}})
    with pytest.raises(ConfigError, match=r"search\.bogus"):
        select(hw, {"search": {"bogus": 1}})
    with pytest.raises(ConfigError, match="'nope' forced by the config does not exist"):
        select(hw, {"profile": "nope"})


def test_select__nothing_matches_other_kind(tmp_path: Path) -> None:
    hw = probe_hardware(tmp_path)  # empty tree: kind "other"
    with pytest.raises(ConfigError, match="no profile matches other"):
        select(hw)


def test_select__memory_rule_and_near_miss_reasons(tmp_path: Path) -> None:
    hw = probe_hardware(FIXTURES / "raspberry-pi-4b-4gb")
    src = _copy_profile(
        tmp_path, "raspberry-pi-4", 'kind = "raspberry-pi"=>kind = "raspberry-pi"\nmin_memory_mb = 6000'
    )
    small_pi = load_profile(src)
    generic = load_profile(profiles_dir() / "raspberry-pi-5.toml")
    with pytest.raises(ConfigError):
        select(hw, profiles=[small_pi, generic])
    big = dataclasses.replace(hw, memory=dataclasses.replace(hw.memory, total_mb=7800)) if hw.memory else hw
    profile, reasons = select(big, profiles=[small_pi, generic])
    assert profile.name == "raspberry-pi-4"
    assert "memory 7800 MB >= 6000 MB" in reasons[0]
    assert any(r.startswith("raspberry-pi-5 not matched: model") for r in reasons)


def test_select__x86_with_gpu_prefers_the_nvidia_profile() -> None:
    hw = probe_hardware(FIXTURES / "x86-64-avx512-xeon")
    with_gpu = dataclasses.replace(hw, nvidia_gpus=(NvidiaGpu(0, "NVIDIA A10G", 22731, "8.6"),))
    profile, reasons = select(with_gpu)
    assert profile.name == "x86-64-nvidia"
    assert "NVIDIA GPU: NVIDIA A10G" in reasons[0]
    assert "also matched, lower priority: x86-64 (priority 0)" in reasons


@pytest.mark.parametrize(
    ("available", "providers", "chosen"),
    [
        (("numpy", "tensorrt", "onnx"), ("CPUExecutionProvider",), "tensorrt/fp16"),
        (
            ("numpy", "onnx"),
            ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
            "onnx/fp16 via TensorrtExecutionProvider",
        ),
        (
            ("numpy", "onnx"),
            ("CUDAExecutionProvider", "CPUExecutionProvider"),
            "onnx/fp16 via CUDAExecutionProvider",
        ),
        (("numpy", "onnx"), ("CPUExecutionProvider",), "onnx/fp32"),
        (("numpy",), (), "numpy/fp32"),
    ],
)
def test_choose_runtime__fallbacks_in_order(
    available: tuple[str, ...], providers: tuple[str, ...], chosen: str
) -> None:
    profile = load_profile(profiles_dir() / "x86-64-nvidia.toml")
    choice, reasons = choose_runtime(profile, _runtimes(*available, providers=providers))
    assert choice is not None and choice.label == chosen
    assert reasons[-1] == f"runtime {chosen}: usable, chosen"
    if "tensorrt" not in available:
        assert reasons[0].startswith("runtime tensorrt/fp16: missing (tensorrt missing")


def test_choose_runtime__none_usable() -> None:
    profile = load_profile(profiles_dir() / "jetson-nano.toml")
    empty = Runtimes(
        tuple(RuntimeStatus(n, False, problem="gone") for n in ("numpy", "onnx", "tensorrt", "katago"))
    )
    choice, reasons = choose_runtime(profile, empty)
    assert choice is None and reasons[-1] == "no runtime of the preference list is usable"


def test_profiles_dir__env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(profiles_dir() / "arm64.toml", tmp_path / "arm64.toml")
    monkeypatch.setenv("KATAGO_EDGE_PROFILES", str(tmp_path))
    assert [p.name for p in load_profiles()] == ["arm64"]


def test_select__unknown_pi_model_falls_back_to_generic_arm64(tmp_path: Path) -> None:
    root = tmp_path / "pi-next"
    shutil.copytree(FIXTURES / "raspberry-pi-5-8gb", root)
    (root / "proc/device-tree/model").write_bytes(b"Raspberry Pi 9 Model B Rev 1.0\0")
    cpuinfo = (
        (root / "proc/cpuinfo")
        .read_text()
        .replace("d04170", "d041f0")
        .replace("Pi 5 Model B", "Pi 9 Model B")
    )
    (root / "proc/cpuinfo").write_text(cpuinfo)  # type 0x1f: not in the revision-code table
    hw = probe_hardware(root)
    assert hw.kind == "raspberry-pi" and hw.raspberry_pi is not None and hw.raspberry_pi.type_name is None
    profile, reasons = select(hw)
    assert profile.name == "arm64"
    assert any(
        r.startswith("raspberry-pi-5 not matched: model 'Raspberry Pi 9 Model B Rev 1.0'") for r in reasons
    )
    assert (
        "no raspberry-pi profile matches 'Raspberry Pi 9 Model B Rev 1.0'; treating it as a generic arm64 board"
        in reasons
    )


def test_choose_engine__katago_needs_a_binary() -> None:
    nano = load_profile(profiles_dir() / "jetson-nano.toml")
    with_binary = Runtimes((RuntimeStatus("katago", True, path="/usr/local/bin/katago"),))
    assert choose_engine(nano, with_binary) == ("katago", ["engine katago: binary /usr/local/bin/katago"])
    # no binary here: the daemon still runs KataGo (katrain's, x86-64 only), it never swaps engines
    engine, reasons = choose_engine(nano, _runtimes("numpy", "onnx"), machine="x86_64")
    assert engine == "katago"
    assert reasons == [
        "engine katago (katago missing): the daemon runs KataGo from the katrain wheel instead (cached, "
        "else fetched from PyPI at first start, ~106 MB, as [katago] download = true allows)"
    ]
    engine, reasons = choose_engine(nano, _runtimes("numpy", "onnx"), machine="aarch64")
    assert engine == "katago"
    assert reasons == [
        "engine katago (katago missing): the katrain wheel's KataGo is x86-64 only, so on this aarch64 "
        'machine the daemon cannot start until a katago binary is installed; engine = "native" in the '
        "agent config runs our search instead"
    ]
    assert not any("fallback" in r for r in reasons)
    pi = load_profile(profiles_dir() / "raspberry-pi-4.toml")
    assert choose_engine(pi, with_binary)[0] == "native"


def test_select__revision_type_decides_and_model_glob_covers_unknown_types(tmp_path: Path) -> None:
    root = tmp_path / "pi"
    shutil.copytree(FIXTURES / "raspberry-pi-4b-4gb", root)
    cpuinfo = root / "proc/cpuinfo"
    # the device-tree model names a Pi 5, but the revision code (type 0x11 = 4B) decides
    (root / "proc/device-tree/model").write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    profile, reasons = select(probe_hardware(root))
    assert profile.name == "raspberry-pi-4" and "Pi revision type '4B'" in reasons[0]
    # without a Revision line the model string is all there is
    cpuinfo.write_text(
        "\n".join(line for line in cpuinfo.read_text().splitlines() if not line.startswith("Revision"))
    )
    profile, reasons = select(probe_hardware(root))
    assert profile.name == "raspberry-pi-5"
    assert "model 'Raspberry Pi 5 Model B Rev 1.0' matches 'Raspberry Pi 5*'" in reasons[0]


def test_load_profile__verify_overrides_per_precision(tmp_path: Path) -> None:
    extra = '\n[verify.int8]\n"policy_kl.mean" = ["<", 0.05]\n"policy_top1_agreement" = [">=", 0.9]\n'
    profile = load_profile(_copy_profile(tmp_path, "raspberry-pi-4", extra=extra))
    assert profile.verify == {"int8": {"policy_kl.mean": ("<", 0.05), "policy_top1_agreement": (">=", 0.9)}}
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(ConfigError, match=r"verify\.int8\.policy_kl\.mean\.0"):
        load_profile(
            _copy_profile(bad, "raspberry-pi-4", extra='\n[verify.int8]\n"policy_kl.mean" = ["~", 0.05]\n')
        )
    with pytest.raises(ConfigError, match=r"verify\.int4"):
        load_profile(
            _copy_profile(bad, "raspberry-pi-4", extra='\n[verify.int4]\n"policy_kl.mean" = ["<", 0.05]\n')
        )


def test_profiles__no_cpu_runtime_entry_is_int8() -> None:
    """docs/conversion.md, "CPU profiles and INT8": a profile entry applies to whatever network the
    device runs, and serving waits for the first start's conversion (TFLite INT8: 12 s for b6c96,
    12-23 min for the b7c96 nets, 46 min for b10c384, which gains only 1.5x); ARM is unmeasured: no
    CPU entry lists INT8 until it can be prepared without blocking serving."""
    for profile in load_profiles():
        cpu = [c for c in profile.runtimes if c.runtime in ("onnx", "tflite", "numpy") and c.provider is None]
        assert all(c.precision != "int8" for c in cpu), profile.name
