"""Replaying a validated query once (``agent.protocol.replay``), as ``katago analysis`` does."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import QueryError
from agent.game.board import BLACK, WHITE
from agent.protocol.query import parse_query
from agent.protocol.replay import build_turns
from agent.search.params import SearchParams


def _turns(**fields: Any) -> tuple[list[tuple[int, Any]], list[tuple[str, str]]]:
    query = {"id": "r", "moves": [], "rules": "tromp-taylor", "komi": 7.5, "boardXSize": 9, "boardYSize": 9}
    return build_turns(parse_query({**query, **fields}, SearchParams()))


def test_replay__one_snapshot_per_analysed_turn() -> None:
    turns, warnings = _turns(moves=[["B", "E5"], ["W", "C3"], ["B", "G7"]], analyzeTurns=[0, 2, 3])
    assert [t for t, _ in turns] == [0, 2, 3] and warnings == []
    assert [len(state.moves) for _, state in turns] == [0, 2, 3]
    assert [state.pla for _, state in turns] == [BLACK, BLACK, WHITE]


def test_replay__handicap_stones_give_white_the_first_move() -> None:
    (turn,), _ = _turns(initialStones=[["B", "D4"], ["B", "F6"]])
    assert turn[1].pla == WHITE
    (turn,), _ = _turns(initialStones=[["B", "D4"], ["B", "F6"]], initialPlayer="B")
    assert turn[1].pla == BLACK


def test_replay__an_illegal_move_names_its_turn() -> None:
    with pytest.raises(QueryError) as info:
        _turns(moves=[["B", "E5"], ["W", "E5"]])
    assert (str(info.value), info.value.field) == ("Illegal move 1: E5", "moves")


def test_replay__unsupported_rules_are_warnings_and_replaced() -> None:
    rules = {"ko": "SPIGHT", "scoring": "AREA", "tax": "NONE", "suicide": True, "hasButton": False}
    (turn,), warnings = _turns(rules=rules)
    assert turn[1].rules.ko == "SITUATIONAL"
    assert [field for field, _ in warnings] == ["rules"] and "not supported by neural net" in warnings[0][1]
    assert _turns(rules="tromp-taylor")[1] == []
