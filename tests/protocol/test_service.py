"""AnalysisService: actions, errors and analysis responses over the fake network."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from protocol_helpers import Collector, make_engine

from agent.protocol.service import AnalysisService

GOOD = {
    "id": "q1",
    "moves": [["B", "D4"], ["W", "Q16"]],
    "rules": "chinese",
    "komi": 7.5,
    "boardXSize": 19,
    "boardYSize": 19,
}


@pytest.fixture
def service() -> Iterator[AnalysisService]:
    svc = AnalysisService(make_engine())
    yield svc
    svc.close(timeout=10)


@pytest.fixture
def collect() -> Collector:
    return Collector()


def line(**kw: object) -> str:
    return json.dumps({**GOOD, **kw})


def test_service__good_query_gets_one_final_response(service: AnalysisService, collect: Collector) -> None:
    service.handle_line(line(includePolicy=True, includeOwnership=True), collect)
    service.close()
    finals = collect.finals()
    assert len(finals) == 1
    r = finals[0]
    assert r["id"] == "q1" and r["turnNumber"] == 2
    assert r["rootInfo"]["visits"] >= 20
    assert r["rootInfo"]["currentPlayer"] == "B"
    assert len(r["policy"]) == 362 and r["policy"][r["policy"].index(-1)] == -1  # D4/Q16 occupied
    assert abs(sum(p for p in r["policy"] if p > 0) - 1.0) < 1e-4
    assert len(r["ownership"]) == 361
    assert [m["order"] for m in r["moveInfos"]] == list(range(len(r["moveInfos"])))
    assert (
        sum(m["edgeVisits"] for m in r["moveInfos"] if "isSymmetryOf" not in m) == r["rootInfo"]["visits"] - 1
    )


def test_service__analyze_turns_each_get_a_final(service: AnalysisService, collect: Collector) -> None:
    service.handle_line(line(id="t", analyzeTurns=[0, 1, 2]), collect)
    service.close()
    assert sorted(r["turnNumber"] for r in collect.finals()) == [0, 1, 2]


def test_service__illegal_move_error(service: AnalysisService, collect: Collector) -> None:
    service.handle_line(line(id="bad", moves=[["B", "D4"], ["W", "D4"]]), collect)
    assert collect.items == [{"id": "bad", "field": "moves", "error": "Illegal move 1: D4"}]


def test_service__unknown_field_warns_and_still_analyses(
    service: AnalysisService, collect: Collector
) -> None:
    service.handle_line(line(id="w", fooBar=1), collect)
    service.close()
    assert collect.items[0]["field"] == "fooBar" and "warning" in collect.items[0]
    assert len(collect.finals()) == 1


def test_service__query_version_and_models(service: AnalysisService, collect: Collector) -> None:
    service.handle_line('{"id":"v","action":"query_version"}', collect)
    service.handle_line('{"id":"m","action":"query_models"}', collect)
    assert collect.items[0]["version"] and collect.items[0]["action"] == "query_version"
    assert collect.items[1]["models"][0]["internalName"] == "fake"


def test_service__terminate_queued_gives_no_results(collect: Collector) -> None:
    svc = AnalysisService(make_engine(max_visits=100000))
    svc.handle_line(line(id="long"), collect)
    svc.handle_line(line(id="queued"), collect)
    # "long" is in its playouts (root and a first leaf evaluated): it has results to give when
    # terminated, however slowly the machine got there
    deadline = time.monotonic() + 30
    while svc.stats()["engine"]["nn_rows"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert svc.stats()["engine"]["running"] == 1
    svc.handle_line('{"id":"x","action":"terminate","terminateId":"queued"}', collect)
    svc.handle_line('{"id":"y","action":"terminate","terminateId":"long"}', collect)
    svc.close()
    queued = [r for r in collect.by_id("queued") if "isDuringSearch" in r]
    assert queued == [{"id": "queued", "turnNumber": 2, "isDuringSearch": False, "noResults": True}]
    long_finals = [r for r in collect.by_id("long") if r.get("isDuringSearch") is False]
    assert len(long_finals) == 1 and "rootInfo" in long_finals[0]


def test_service__engine_refusal_is_an_error_with_the_id(collect: Collector) -> None:
    svc = AnalysisService(make_engine())
    svc.close()
    svc.handle_line(line(id="late"), collect)
    assert collect.items == [{"id": "late", "error": "engine is shutting down"}]
