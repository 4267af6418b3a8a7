"""``katago-edge detect`` and ``katago-edge check-config`` through the CLI entry point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.cli import main as cli
from agent.profiles import profiles_dir

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _detect_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert cli.run(["detect", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("device", "kind", "model", "memory_mb", "profile"),
    [
        ("raspberry-pi-5-8gb", "raspberry-pi", "Raspberry Pi 5 Model B Rev 1.0", 8052, "raspberry-pi-5"),
        (
            "jetson-orin-nano-devkit",
            "jetson",
            "NVIDIA Jetson Orin Nano Developer Kit",
            7620,
            "jetson-orin-nano-nx",
        ),
        ("android-galaxy-s9", "android", "samsung SM-G960U", 3626, "android-arm64"),
        ("arm64-rock-5b", "arm64", "Radxa ROCK 5B", 7741, "arm64"),
        ("x86-64-nvidia-desktop", "x86_64", "AMD Ryzen 7 5800X 8-Core Processor", 32032, "x86-64-nvidia"),
    ],
)
def test_detect__json_on_fixture_roots(
    capsys: pytest.CaptureFixture[str], device: str, kind: str, model: str, memory_mb: int, profile: str
) -> None:
    out = _detect_json(capsys, "--root", str(FIXTURES / device))
    hw = out["hardware"]
    assert (hw["kind"], hw["model"], hw["memory_mb"], out["profile"]) == (kind, model, memory_mb, profile)
    assert out["reasons"][0].startswith(f"profile {profile} matched")
    assert isinstance(out["runtimes_missing"], list)
    assert out["engine"] == "native"


def test_detect__this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    out = _detect_json(capsys)
    hw = out["hardware"]
    assert hw["kind"] in ("raspberry-pi", "jetson", "android", "x86_64", "arm64", "other")
    assert hw["memory_mb"] > 0 and hw["cpu"]["cores"] > 0
    assert out["profile"] and out["reasons"]
    assert out["runtime"] is not None  # numpy at least is always usable
    assert cli.run(["detect"]) == 0
    text = capsys.readouterr().out
    assert f"Profile: {out['profile']}" in text and "Why" in text


def test_detect__forced_profile_and_health(capsys: pytest.CaptureFixture[str]) -> None:
    out = _detect_json(capsys, "--root", str(FIXTURES / "raspberry-pi-3b"), "--profile", "arm64", "--health")
    assert out["profile"] == "arm64"
    assert out["health"]["throttling"]["raw"] == "0x50005"
    assert out["health"]["thermal"]["state"] == "normal"  # 61.2 C, arm64 profile soft limit 75 C
    assert out["health"]["thermal"]["temperature_c"] == 61.224


def test_detect__missing_root_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.run(["detect", "--root", str(tmp_path / "nope")]) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_check_config__shipped_profiles(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "12 profiles valid" in out and "ok  profile raspberry-pi-4" in out


def test_check_config__broken_profile_is_reported(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    shutil.copy(profiles_dir() / "arm64.toml", tmp_path / "arm64.toml")
    bad = (profiles_dir() / "x86-64.toml").read_text().replace("threads = 4", "threads = 4\nthread_count = 2")
    (tmp_path / "x86-64.toml").write_text(bad)
    assert cli.run(["check-config", "--profiles-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "search.thread_count: Extra inputs are not permitted" in captured.err
    assert "ok  profile arm64" in captured.out


def test_check_config__agent_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("agent.app.config")
    good = tmp_path / "good.toml"
    good.write_text('profile = "raspberry-pi-4"\n[overrides.search]\nthreads = 2\n')
    assert cli.run(["check-config", str(good)]) == 0
    assert f"ok  config {good}" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('profile = "raspberry-pi-9"\n')
    assert cli.run(["check-config", str(bad)]) == 1
    assert "profile 'raspberry-pi-9' does not exist" in capsys.readouterr().err
    worse = tmp_path / "worse.toml"
    worse.write_text("[overrides.search]\nthreads = 0\n")
    assert cli.run(["check-config", str(worse)]) == 1
    assert "[overrides] do not fit profile" in capsys.readouterr().err


def test_check_config__model_under_home_warns_that_the_service_cannot_see_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('model = "/home/pi/nets/b6c96.bin.gz"\n')
    assert cli.run(["check-config", str(config)]) == 0  # a warning: `serve` by hand can read it
    err = capsys.readouterr().err
    assert (
        f"WARN {config}: model: /home/pi/nets/b6c96.bin.gz is under /home, which the katago-edge "
        "service does not see (ProtectHome=yes in its unit): `sudo katago-edge fetch-model "
        "/home/pi/nets/b6c96.bin.gz` copies it into the agent's model store"
    ) in err
    config.write_text('model = "/var/lib/katago-edge/models/b6c96.bin.gz"\n')
    assert cli.run(["check-config", str(config)]) == 0
    assert "WARN" not in capsys.readouterr().err


def test_detect__runtimes_listed_with_problems(capsys: pytest.CaptureFixture[str]) -> None:
    out = _detect_json(capsys, "--root", str(FIXTURES / "arm64-rock-5b"))
    runtimes = {r["name"]: r for r in out["hardware"]["runtimes"]}
    assert runtimes["numpy"]["available"] is True
    for name in out["runtimes_missing"]:
        assert runtimes[name]["available"] is False and runtimes[name]["problem"]


def test_detect__jetson_nano_says_the_katago_binary_runs_not_a_native_fallback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The jetson-nano profile asks for ``engine = "katago"``: the daemon runs a KataGo binary (or
    fails to start), it never swaps in the native engine, so detect and the daemon's log say that."""
    from agent.app.config import AgentConfig
    from agent.app.startup import make_plan

    root = FIXTURES / "jetson-nano"
    katago = tmp_path / "bin" / "katago"
    katago.parent.mkdir()
    katago.write_text("#!/bin/sh\nexit 0\n")
    katago.chmod(0o755)
    out = _detect_json(capsys, "--root", str(root), "--katago", str(katago))
    assert (out["profile"], out["engine"]) == ("jetson-nano", "katago")
    assert f"engine katago: binary {katago}" in out["reasons"]

    # no binary anywhere (PATH, katrain package): still the KataGo engine, fetched from katrain
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr("agent.hardware.runtimes._katrain_katago", lambda: None)
    monkeypatch.setattr("agent.profiles.platform.machine", lambda: "x86_64")
    out = _detect_json(capsys, "--root", str(root))
    assert (out["profile"], out["engine"]) == ("jetson-nano", "katago")
    engine_reason = next(r for r in out["reasons"] if r.startswith("engine "))
    assert engine_reason.startswith("engine katago (no katago binary found; put a katago binary on PATH")
    assert engine_reason.endswith(
        "the daemon runs KataGo from the katrain wheel instead (cached, else fetched "
        "from PyPI at first start, ~106 MB, as [katago] download = true allows)"
    )
    assert not any("fallback" in r and "engine" in r for r in out["reasons"])
    assert cli.run(["detect", "--root", str(root)]) == 0
    text = capsys.readouterr().out
    assert "  engine katago; runtime " in text and "native engine" not in text

    # the daemon's plan (logged reason by reason at start-up) says the same and runs the same engine
    plan = make_plan(AgentConfig(root=root, model="fake"))
    assert (plan.profile, plan.engine) == ("jetson-nano", "katago")
    assert engine_reason in plan.reasons

    # on the Nano itself (aarch64) the katrain binary cannot run: say so instead of promising it
    monkeypatch.setattr("agent.profiles.platform.machine", lambda: "aarch64")
    out = _detect_json(capsys, "--root", str(root))
    assert out["engine"] == "katago"
    assert any(
        "so on this aarch64 machine the daemon cannot start until a katago binary" in r
        for r in out["reasons"]
    )
