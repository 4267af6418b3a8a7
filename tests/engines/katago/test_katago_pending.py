"""The in-flight table: relabelling, one final per turn, re-send once, waiting queries."""

from __future__ import annotations

from typing import Any

from agent.engines.katago_pending import PendingTable


def _final(key: str, turn: int, **extra: Any) -> dict[str, Any]:
    return {"id": key, "turnNumber": turn, "isDuringSearch": False, "moveInfos": [], **extra}


def test_route__relabels_and_finishes_after_every_turn() -> None:
    table, got = PendingTable(), []
    p = table.new_query({"id": "mine", "moves": [["B", "C3"]], "analyzeTurns": [0, 1]}, got.append, gen=1)
    assert p.query["id"] == p.key != "mine"
    for resp in (
        {"id": p.key, "field": "x", "warning": "w"},
        {"id": p.key, "turnNumber": 0, "isDuringSearch": True},
        _final(p.key, 0),
    ):
        emit, out = table.route(1, resp) or (None, None)
        assert emit == got.append and out is not None and out["id"] == "mine"
    assert table.queries() == 1
    assert table.route(2, _final(p.key, 1)) is None  # a line from another child generation
    assert table.route(1, _final(p.key, 1)) is not None
    assert table.queries() == 0 and table.counters["completed"] == 1


def test_route__katago_error_ends_the_query() -> None:
    table = PendingTable()
    p = table.new_query({"id": "e", "moves": []}, lambda r: None, gen=1)
    assert table.route(1, {"id": p.key, "field": "rules", "error": "Could not parse rules"}) is not None
    assert table.queries() == 0 and table.counters["failed"] == 1


def test_on_death__resend_only_open_turns_once_then_give_up() -> None:
    table = PendingTable()
    query = {"id": "q", "moves": [["B", "C3"]] * 3, "analyzeTurns": [0, 1, 3], "priorities": [5, 6, 7]}
    p = table.new_query(query, lambda r: None, gen=1)
    table.route(1, _final(p.key, 1))
    assert table.on_death(1) == []
    assert p.sent_gen is None and p.resent
    assert p.query["analyzeTurns"] == [0, 3] and p.query["priorities"] == [5, 7]
    assert table.assign_waiting(2) == [p] and p.sent_gen == 2
    assert table.on_death(2) == [p]  # second death: the caller answers it with an error
    deliveries = table.fail(lambda q: q is p, "boom")
    assert [resp for _, resp in deliveries] == [{"id": "q", "error": "boom"}]
    assert table.counters["resent"] == 1 and table.queries() == 0


def test_drop_waiting__unsent_turns_get_no_results_finals() -> None:
    table, got = PendingTable(), []
    table.new_query({"id": "w", "moves": [], "analyzeTurns": [0]}, got.append, gen=None)
    sent = table.new_query({"id": "s", "moves": []}, got.append, gen=3)
    for emit, resp in table.drop_waiting(None):
        emit(resp)
    assert got == [{"id": "w", "turnNumber": 0, "isDuringSearch": False, "noResults": True}]
    assert table.queries_of("s") == [sent] and table.queries() == 1


def test_actions__finished_by_first_answer_and_forgotten_with_their_child() -> None:
    table = PendingTable()
    version = table.new_action("query_version", gen=4)
    ping = table.new_action("query_version", gen=4, label="ping")
    assert table.pinging(4) and table.busy(4) and not table.busy(5)
    assert table.route(4, {"id": version.key, "version": "1.18.1"}) is None
    assert version.done.is_set() and version.result == {"id": version.key, "version": "1.18.1"}
    table.forget_actions(4)
    assert not table.busy(4) and not ping.done.is_set()
