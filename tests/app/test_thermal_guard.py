"""Thermal guard against a fixture thermal zone whose temperature the test changes."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.app.health import HealthCollector
from agent.app.thermal import ThermalGuard, ThermalState, next_state
from agent.errors import ThermalLimit
from agent.profiles import ThermalSettings, load_profile, profiles_dir

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture
def pi4(tmp_path: Path) -> Path:
    root = tmp_path / "pi4"
    shutil.copytree(FIXTURES / "raspberry-pi-4b-4gb", root)
    return root


def set_temp(root: Path, celsius: float, zone: int = 0) -> None:
    (root / f"sys/class/thermal/thermal_zone{zone}/temp").write_text(f"{round(celsius * 1000)}\n")


@pytest.fixture
def guard(pi4: Path) -> ThermalGuard:
    profile = load_profile(profiles_dir() / "raspberry-pi-4.toml")  # soft 75, hard 82, hysteresis 5
    return ThermalGuard.from_profile(profile, root=pi4, interval_s=0.02)


def test_thermal_guard__soft_hard_and_hysteresis(guard: ThermalGuard, pi4: Path) -> None:
    steps = [
        (52.6, ThermalState.NORMAL, (4, 400)),
        (75.0, ThermalState.SOFT, (2, 128)),
        (72.0, ThermalState.SOFT, (2, 128)),  # not yet below 75 - 5
        (69.9, ThermalState.NORMAL, (4, 400)),
        (83.5, ThermalState.HARD, (2, 128)),
        (78.0, ThermalState.HARD, (2, 128)),  # still above 82 - 5: keeps refusing
        (76.9, ThermalState.SOFT, (2, 128)),  # cooled below 77: work again, reduced
        (60.0, ThermalState.NORMAL, (4, 400)),
    ]
    for temp, state, limits in steps:
        set_temp(pi4, temp)
        status = guard.check()
        assert (status.state, status.temperature_c, guard.limits()) == (state, temp, limits), temp
        assert status.zone == "cpu-thermal"


def test_thermal_guard__hard_limit_refuses_work_with_clear_message(guard: ThermalGuard, pi4: Path) -> None:
    set_temp(pi4, 84.2)
    guard.check()
    with pytest.raises(
        ThermalLimit,
        match=r"84\.2 °C \(cpu-thermal\) is above its hard thermal limit 82\.0 °C.*below 77\.0 °C",
    ):
        guard.ensure_can_start()
    set_temp(pi4, 65.0)
    guard.check()
    guard.ensure_can_start()  # cooled: accepts work again


def test_thermal_guard__background_thread_follows_the_zone(guard: ThermalGuard, pi4: Path) -> None:
    seen: list[ThermalState] = []
    guard._on_change = lambda status: seen.append(status.state)
    set_temp(pi4, 50.0)
    with guard:
        assert any(t.name == "thermal-guard" for t in threading.enumerate())
        set_temp(pi4, 90.0)
        deadline = time.monotonic() + 5
        while guard.status.state is not ThermalState.HARD and time.monotonic() < deadline:
            time.sleep(0.01)
        assert guard.status.state is ThermalState.HARD
    assert not any(t.name == "thermal-guard" for t in threading.enumerate())
    assert seen[:2] == [ThermalState.NORMAL, ThermalState.HARD]


def test_thermal_guard__state_visible_in_health(guard: ThermalGuard, pi4: Path) -> None:
    set_temp(pi4, 78.0)
    guard.check()
    snap = HealthCollector(root=pi4, thermal=guard, first_sample_s=0.0).snapshot().to_dict()
    assert snap["thermal"]["state"] == "soft"
    assert snap["thermal"]["threads"] == 2 and snap["thermal"]["max_visits"] == 128
    assert snap["thermal"]["refusing_work"] is False
    assert snap["temperatures"] == {"cpu-thermal": 78.0}


def test_thermal_guard__hottest_matching_zone_counts(tmp_path: Path) -> None:
    root = tmp_path / "orin"
    shutil.copytree(FIXTURES / "jetson-orin-nano-devkit", root)
    profile = load_profile(profiles_dir() / "jetson-orin-nano-nx.toml")
    guard = ThermalGuard.from_profile(profile, root=root)
    status = guard.check()
    assert (status.state, status.temperature_c, status.zone) == (ThermalState.NORMAL, 65.562, "cpu-thermal")
    set_temp(root, 93.0, zone=8)  # tj-thermal
    status = guard.check()
    assert (status.state, status.zone) == (ThermalState.HARD, "tj-thermal")


def test_thermal_guard__no_zone_is_unknown_and_never_refuses(tmp_path: Path) -> None:
    settings = ThermalSettings(zones=["cpu-thermal"], soft_limit_c=70, hard_limit_c=80)
    guard = ThermalGuard(settings, threads=4, max_visits=100, root=tmp_path)
    status = guard.check()
    assert status.state is ThermalState.UNKNOWN and status.temperature_c is None
    assert guard.limits() == (4, 100)
    guard.ensure_can_start()


def test_next_state__table() -> None:
    s = ThermalSettings(soft_limit_c=70, hard_limit_c=80, hysteresis_c=3)
    assert next_state(ThermalState.NORMAL, 69.9, s) is ThermalState.NORMAL
    assert next_state(ThermalState.NORMAL, 80.0, s) is ThermalState.HARD
    assert next_state(ThermalState.HARD, 77.1, s) is ThermalState.HARD
    assert next_state(ThermalState.HARD, 76.9, s) is ThermalState.SOFT
    assert next_state(ThermalState.HARD, 60.0, s) is ThermalState.NORMAL
    assert next_state(ThermalState.SOFT, 67.1, s) is ThermalState.SOFT
    assert next_state(ThermalState.SOFT, None, s) is ThermalState.UNKNOWN


# no per-example deadline or slow-generation check: a loaded machine's stall is not a failure
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(min_value=20, max_value=110, allow_nan=False), min_size=1, max_size=40))
def test_next_state__invariants_over_any_temperature_sequence(temps: list[float]) -> None:
    s = ThermalSettings(soft_limit_c=75, hard_limit_c=85, hysteresis_c=5)
    state = ThermalState.UNKNOWN
    for temp in temps:
        state = next_state(state, temp, s)
        assert (state is ThermalState.HARD) == (temp >= 85) or 80 <= temp < 85  # hysteresis band only
        if temp >= 75:
            assert state in (ThermalState.SOFT, ThermalState.HARD)
        if temp < 70:
            assert state is ThermalState.NORMAL
