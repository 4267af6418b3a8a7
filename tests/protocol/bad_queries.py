"""A corpus of bad analysis requests and the KataGo-shaped reply each must get.

Each entry is ``(line, expected)`` where ``line`` is ``str`` or ``bytes`` and ``expected`` is
either ``("general", substring)`` -> ``{"error": ...}`` without id, or
``("field", id, field, substring)`` -> ``{"id", "field", "error"}``.
"""

from __future__ import annotations

import json
from typing import Any

BASE: dict[str, Any] = {
    "id": "bad",
    "moves": [["B", "D4"], ["W", "Q16"]],
    "rules": "chinese",
    "komi": 7.5,
    "boardXSize": 19,
    "boardYSize": 19,
    "maxVisits": 5,
}

Expected = tuple[Any, ...]


def q(**kw: Any) -> str:
    d = {**BASE, **kw}
    return json.dumps({k: v for k, v in d.items() if v is not _DROP})


class _Drop:
    pass


_DROP = _Drop()
WRONG_TYPES: list[Any] = [None, True, "x", 3.5, [], {}, [1], {"a": 1}]
MOVES_SHAPE = "Must be an array of pairs"


def corpus() -> list[tuple[str | bytes, Expected]]:
    out: list[tuple[str | bytes, Expected]] = []
    add = out.append

    # --- undecodable lines and non-objects (general errors, no id)
    for text in [
        '{"id":',
        "{",
        "}",
        "[1,2",
        '{"id": "a",}',
        "nul",
        "tru",
        '{"id": NaN}',
        "'single'",
        '{"id":"a" "moves":[]}',
        "{id:1}",
        '{"id":"a"}}',
        "\x00",
        "[]",
        "123",
        '"str"',
        "null",
        "true",
        "[{}]",
        "1.5",
    ]:
        add((text, ("general", "")))
    for raw in [
        b"\xff\xfe\xfd",
        b'{"id":"\xc3\x28"}',
        b"\x80abc",
        b'{"id":"a","moves":[["B","\xe2\x82"]]}',
        b"\xed\xa0\x80",
        b'\xc0\xaf{"id":"x"}',
    ]:
        add((raw, ("general", "")))
    add(("[" * 100000 + "]" * 100000, ("general", "")))
    add(('{"a":' * 5000 + "1" + "}" * 5000, ("general", "")))
    add(("[" * 70 + "]" * 70, ("general", "")))
    # --- missing or non-string id
    for idv in [_DROP, None, 1, 1.5, True, [], {}, ["a"]]:
        add((q(id=idv), ("general", 'Request must have a string "id" field')))
    # --- actions
    add(('{"id":"a","action":"bogus"}', ("general", "'action' field must be")))
    add(('{"id":"a","action":""}', ("general", "'action' field must be")))
    add(('{"id":"a","action":"QUERY_VERSION"}', ("general", "'action' field must be")))
    add(('{"id":"a","action":"terminate"}', ("field", "a", "terminateId", "terminateId")))
    for tid in [1, None, [], {}, True]:
        add(
            (
                json.dumps({"id": "a", "action": "terminate", "terminateId": tid}),
                ("field", "a", "terminateId", "terminateId"),
            )
        )
    for tn in ["1", 1, [1.5], ["a"], {"a": 1}, [None], [True]]:
        for action in ("terminate", "terminate_all"):
            add(
                (
                    json.dumps({"id": "a", "action": action, "terminateId": "x", "turnNumbers": tn}),
                    ("field", "a", "turnNumbers", "array of integers"),
                )
            )
    # --- board size
    for key in ("boardXSize", "boardYSize"):
        add((q(**{key: _DROP}), ("field", "bad", key, "Must provide an integer from 2 to 19")))
        for v in [0, 1, 20, 25, -3, 2**70, 19.5, "19", None, True, [19], {}]:
            add((q(**{key: v}), ("field", "bad", key, "Must provide an integer from 2 to 19")))
    # --- moves / initialStones shape, players, vertices
    add((q(moves=_DROP), ("field", "bad", "moves", "Must specify an array")))
    for mv in [
        "D4",
        1,
        None,
        {},
        [["B"]],
        [["B", "D4", "x"]],
        [[1, "D4"]],
        [["B", 4]],
        ["BD4"],
        [[]],
        [None],
        [["B", None]],
        [[["B"], "D4"]],
    ]:
        add((q(moves=mv), ("field", "bad", "moves", MOVES_SHAPE)))
    for pla in ["X", "", "bl", "blackk", "1", "red", "none"]:
        add((q(moves=[[pla, "D4"]]), ("field", "bad", "moves", "Could not parse player")))
    for v in [
        "Z99",
        "I5",
        "T20",
        "A0",
        "",
        "D",
        "44",
        "(19,0)",
        "(0,-1)",
        "(a,b)",
        "pas",
        "D4.5",
        "AA1",
        "U1",
        "A 1",
        "passs",
        "-D4",
        "D-4",
        "(1,2,3)",
    ]:
        add((q(moves=[["B", v]]), ("field", "bad", "moves", "Could not parse board location")))
    for v in ["pass", "PASS", "Z1", "J20"]:
        add(
            (q(initialStones=[["B", v]]), ("field", "bad", "initialStones", "Could not parse board location"))
        )
    for st in ["x", 5, [["B"]], [[1, 2]]]:
        add((q(initialStones=st), ("field", "bad", "initialStones", MOVES_SHAPE)))
    add((q(initialStones=[["Q", "D4"]]), ("field", "bad", "initialStones", "Could not parse player")))
    # --- illegal moves (replay)
    add((q(moves=[["B", "D4"], ["W", "D4"]]), ("field", "bad", "moves", "Illegal move 1: D4")))
    add(
        (q(moves=[["B", "D4"], ["W", "Q16"], ["B", "Q16"]]), ("field", "bad", "moves", "Illegal move 2: Q16"))
    )
    add(
        (q(initialStones=[["B", "C3"]], moves=[["W", "C3"]]), ("field", "bad", "moves", "Illegal move 0: C3"))
    )
    add(
        (
            q(boardXSize=9, boardYSize=9, initialStones=[["W", "A2"], ["W", "B1"]], moves=[["B", "A1"]]),
            ("field", "bad", "moves", "Illegal move 0: A1"),
        )
    )  # single-stone suicide
    add((q(moves=[["B", "A1"], ["W", "A1"]]), ("field", "bad", "moves", "Illegal move 1: A1")))
    # --- initialPlayer
    for v in ["X", 1, None, "", [], "bw"]:
        add((q(initialPlayer=v), ("field", "bad", "initialPlayer", 'Must be "b" or "w"')))
    # --- analyzeTurns / priorities / priority
    for v in ["0", 0, [0.5], ["a"], {}, [None], [True, 1]]:
        add((q(analyzeTurns=v), ("field", "bad", "analyzeTurns", "array of integers")))
    for v in [[-1], [3], [0, 99], [100000]]:
        add((q(analyzeTurns=v), ("field", "bad", "analyzeTurns", "Invalid turn number")))
    add(
        (
            q(priorities=[1]),
            ("field", "bad", "priorities", "Can only specify when also specifying analyzeTurns"),
        )
    )
    add((q(analyzeTurns=[0, 1], priorities=[1]), ("field", "bad", "priorities", "matching length")))
    for v in ["1", [1.5], ["a"], 3]:
        add((q(analyzeTurns=[0], priorities=v), ("field", "bad", "priorities", "array of integers")))
    add((q(analyzeTurns=[0], priorities=[2**63 - 1]), ("field", "bad", "priorities", "Invalid priority")))
    add(
        (q(analyzeTurns=[0], priorities=[1], priority=1), ("field", "bad", "priority", "Cannot specify both"))
    )
    for v in ["1", 1.5, None, True, 2**62 + 5, -(2**62) - 5, [1]]:
        add((q(priority=v), ("field", "bad", "priority", "between -2^62 and 2^62")))
    # --- rules, komi, whiteHandicapBonus
    add((q(rules=_DROP), ("field", "bad", "rules", "Must specify rules string")))
    for v in [1, None, True, ["chinese"], 7.5]:
        add((q(rules=v), ("field", "bad", "rules", "Must specify rules string")))
    for v in ["chinee", "", "japanese2", "{}x", "tromp", "go"]:
        add((q(rules=v), ("field", "bad", "rules", "")))
    for v in [
        {"ko": "NONE"},
        {"scoring": "POINTS"},
        {"tax": "SOME"},
        {"suicide": "yes"},
        {"foo": 1},
        {"hasButton": 1},
        {"whiteHandicapBonus": "N+1"},
        {"komi": 7.3},
        {"komi": "7.5"},
        {"ko": 1},
    ]:
        add((q(rules=v), ("field", "bad", "rules", "")))
    for v in [7.3, 400.5, -401, 1000, "7.5", None, True, [7.5], 0.25, 1e308]:
        add((q(komi=v), ("field", "bad", "komi", "integer or half-integer")))
    for v in [1, None, [], True]:
        add((q(whiteHandicapBonus=v), ("field", "bad", "whiteHandicapBonus", "Must be a string")))
    for v in ["2", "N+1", "n-2", ""]:
        add((q(whiteHandicapBonus=v), ("field", "bad", "whiteHandicapBonus", "")))
    # --- overrideSettings
    for v in [1, "x", [], None, True]:
        add((q(overrideSettings=v), ("field", "bad", "overrideSettings", "Must be an object")))
    for v in [
        {"wideRootNoise": "lots"},
        {"maxTime": -1},
        {"rootNumSymmetriesToSample": 9},
        {"reportAnalysisWinratesAs": "RED"},
        {"playoutDoublingAdvantage": 10},
        {"ignorePreRootHistory": "maybe"},
        {"rootNumSymmetriesToSample": 2.5},
        {"conservativePass": 3},
        {"wideRootNoise": None},
    ]:
        add((q(overrideSettings=v), ("field", "bad", "overrideSettings", "Could not set settings")))
    # --- numeric and boolean options
    for v in [0, -1, 2**51, 1.5, "10", None, True, [5]]:
        add((q(maxVisits=v), ("field", "bad", "maxVisits", "Must be an integer from 1 to 2^50")))
    for v in [0, 1001, 2.5, "5", None]:
        add((q(analysisPVLen=v), ("field", "bad", "analysisPVLen", "Must be an integer from 1 to 1000")))
    for v in [-0.1, 2.5, "1", None, True]:
        add((q(rootFpuReductionMax=v), ("field", "bad", "rootFpuReductionMax", "from 0.0 to 2.0")))
    for v in [0.0, 0.001, 101, "1", None, False]:
        add((q(rootPolicyTemperature=v), ("field", "bad", "rootPolicyTemperature", "from 0.01 to 100.0")))
    for key in (
        "includeOwnership",
        "includeOwnershipStdev",
        "includeMovesOwnership",
        "includeMovesOwnershipStdev",
        "includePolicy",
        "includePVVisits",
        "includeNoResultValue",
    ):
        for v in [1, "true", None, [], 0]:
            add((q(**{key: v}), ("field", "bad", key, "Must be a boolean")))
    for key in ("reportDuringSearchEvery", "firstReportDuringSearchAfter"):
        for v in [0, 0.0001, 1e7, "1", None, True]:
            add((q(**{key: v}), ("field", "bad", key, "Must be number of seconds")))
    # --- avoidMoves / allowMoves
    ok_entry = {"player": "B", "moves": ["D5"], "untilDepth": 1}
    add(
        (
            q(avoidMoves=[ok_entry], allowMoves=[ok_entry]),
            ("field", "bad", "allowMoves", "Cannot specify both allowMoves and avoidMoves"),
        )
    )
    add((q(allowMoves=[ok_entry, ok_entry]), ("field", "bad", "allowMoves", "only allows one entry")))
    for key in ("avoidMoves", "allowMoves"):
        for v in [
            1,
            "D4",
            {"player": "B"},
            [1],
            [{"player": "B", "moves": ["D5"]}],
            [{"moves": [], "untilDepth": 1}],
            [{"player": "B", "untilDepth": 1}],
        ]:
            add((q(**{key: v}), ("field", "bad", key, "subfields 'player', 'moves', 'untilDepth'")))
        add((q(**{key: [{**ok_entry, "player": "Z"}]}), ("field", "bad", "player", 'Must be "b" or "w"')))
        add(
            (
                q(**{key: [{**ok_entry, "moves": "D5"}]}),
                ("field", "bad", "moves", "array of GTP board vertices"),
            )
        )
        add(
            (
                q(**{key: [{**ok_entry, "moves": [5]}]}),
                ("field", "bad", "moves", "array of GTP board vertices"),
            )
        )
        add(
            (
                q(**{key: [{**ok_entry, "moves": ["Z40"]}]}),
                ("field", "bad", "moves", "Could not parse board location"),
            )
        )
        for d in [0, -1, 1.5, "1", None, 2_000_000_000]:
            add(
                (
                    q(**{key: [{**ok_entry, "untilDepth": d}]}),
                    ("field", "bad", "untilDepth", "positive integer"),
                )
            )
    # --- huge arrays
    add((q(moves=[["B", "D4"]] * 200000), ("field", "bad", "moves", "Illegal move 1: D4")))
    add((q(moves=[["B", "pass"]] * 3 + [["X", "D4"]]), ("field", "bad", "moves", "Could not parse player")))
    add((q(analyzeTurns=list(range(100000))), ("field", "bad", "analyzeTurns", "Invalid turn number")))
    add(
        (
            q(initialStones=[["B", "Z9"]] * 50000),
            ("field", "bad", "initialStones", "Could not parse board location"),
        )
    )
    return out
