"""The thermal guard in front of the real analysis service (native engine over the fake net), with a
fixture thermal zone whose temperature the test changes; and the engine self-test."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.app.service_switch import ServiceSwitch, self_test
from agent.app.thermal import ThermalGuard
from agent.backends.fake import FakeNet
from agent.engines.native import NativeEngine
from agent.errors import EngineError
from agent.profiles import ThermalSettings
from agent.protocol.service import AnalysisService
from agent.search.params import SearchParams

QUERY = {"moves": [], "rules": "japanese", "komi": 6.5, "boardXSize": 9, "boardYSize": 9}


class Finals:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.done = threading.Event()

    def __call__(self, response: dict[str, Any]) -> None:
        if "error" in response or response.get("isDuringSearch") is False:
            self.items.append(response)
            self.done.set()

    def get(self) -> dict[str, Any]:
        assert self.done.wait(30)
        return self.items[-1]


@pytest.fixture
def service() -> Any:
    engine = NativeEngine(
        FakeNet(),
        default_params=SearchParams(max_visits=40),
        randomize=False,
        seed=3,
    )
    svc = AnalysisService(engine)
    yield svc
    svc.close(5)


def _zone(root: Path, celsius: float) -> None:
    zone = root / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text(f"{int(celsius * 1000)}\n")


def test_switch__normal_soft_hard_and_cooling(tmp_path: Path, service: Any) -> None:
    _zone(tmp_path, 50.0)
    settings = ThermalSettings(soft_limit_c=70, hard_limit_c=80, hysteresis_c=5, reduced_max_visits=5)
    guard = ThermalGuard(settings, threads=2, max_visits=40, root=tmp_path)
    switch = ServiceSwitch(service, guard)

    def ask(qid: str, **extra: Any) -> dict[str, Any]:
        finals = Finals()
        switch.handle_query({"id": qid, **QUERY, **extra}, finals)
        return finals.get()

    guard.check()
    assert ask("cool", maxVisits=20)["rootInfo"]["visits"] >= 20

    _zone(tmp_path, 72.0)
    assert str(guard.check().state) == "soft"
    capped = ask("warm", maxVisits=20)
    assert capped["rootInfo"]["visits"] <= 6 and switch.capped == 1  # reduced_max_visits=5 (+ root)

    _zone(tmp_path, 85.0)
    assert str(guard.check().state) == "hard"
    refused = ask("hot", maxVisits=20)
    assert refused["id"] == "hot" and "too hot" in refused["error"] and switch.refused == 1
    version = Finals()
    switch.handle_line(
        '{"id": "v", "action": "query_version"}', lambda r: version(r | {"isDuringSearch": False})
    )
    assert version.get()["action"] == "query_version"  # actions still pass on a hot device

    _zone(tmp_path, 76.0)  # below hard - hysteresis (75)? no: still hard
    assert str(guard.check().state) == "hard"
    _zone(tmp_path, 60.0)
    assert str(guard.check().state) == "normal"
    assert ask("cooled", maxVisits=20)["rootInfo"]["visits"] >= 20


def test_self_test__answers_in_time(service: Any) -> None:
    assert 0 <= self_test(service, 30) < 30


def test_self_test__engine_that_never_answers_is_an_error() -> None:
    class Silent:
        def handle_query(self, query: Any, emit: Any) -> None:
            pass

    with pytest.raises(EngineError, match="did not answer a 2-visit test query within 0 s"):
        self_test(Silent(), 0.2)


def test_progress_watch__stall_only_counts_while_searching() -> None:
    from agent.app.service_switch import ProgressWatch

    watch = ProgressWatch(stall_s=10)
    assert watch.alive({"nn_rows": 5, "running": 0}, 0.0)
    assert watch.alive({"nn_rows": 5, "running": 0}, 100.0)  # idle: fine forever
    assert watch.alive({"nn_rows": 5, "running": 1}, 101.0)
    assert watch.alive({"nn_rows": 5, "running": 1}, 109.0)
    assert not watch.alive({"nn_rows": 5, "running": 1}, 111.0)  # >10 s searching, no evaluation
    assert watch.alive({"nn_rows": 9, "running": 1}, 113.0)  # progress again
    assert watch.alive({"engine": "katago", "pending": 3}, 500.0)  # supervises its own child


def test_switch__profile_max_visits_always_holds_with_a_warning(tmp_path: Path, service: Any) -> None:
    _zone(tmp_path, 40.0)  # cool: the cap is the profile's max_visits, not the reduced one
    guard = ThermalGuard(
        ThermalSettings(soft_limit_c=70, hard_limit_c=80), threads=2, max_visits=12, root=tmp_path
    )
    guard.check()
    switch = ServiceSwitch(service, guard)
    got: list[dict[str, Any]] = []
    finals = Finals()

    def emit(response: dict[str, Any]) -> None:
        got.append(response)
        finals(response)

    line = '{"id": "huge", "maxVisits": 1125899906842624, ' + json.dumps(QUERY)[1:]  # 2^50
    switch.handle_line(line, emit)
    final = finals.get()
    assert got[0] == {
        "id": "huge",
        "field": "maxVisits",
        "warning": "Clamped to 12 visits: this device's profile limit (max_visits)",
    }
    assert 12 <= final["rootInfo"]["visits"] <= 13 and switch.capped == 1
    finals = Finals()
    switch.handle_query({"id": "via-override", **QUERY, "overrideSettings": {"maxVisits": 10**9}}, finals)
    assert finals.get()["rootInfo"]["visits"] <= 13 and switch.capped == 2
    finals = Finals()
    switch.handle_query(
        {"id": "small", **QUERY, "maxVisits": 5, "overrideSettings": {"maxVisits": 10**9}}, finals
    )
    assert finals.get()["rootInfo"]["visits"] <= 6 and switch.capped == 2  # the top-level 5 wins: untouched
