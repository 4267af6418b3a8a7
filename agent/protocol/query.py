"""Parse and validate one KataGo analysis query, with KataGo's error messages and field names.

The checks and their order follow ``katago analysis`` (``cpp/command/analysis.cpp``): board
size first, then ``initialStones``, ``moves``, ``initialPlayer``, ``analyzeTurns``,
``priorities``, ``rules``, ``komi``, ``whiteHandicapBonus``, ``overrideSettings``, the numeric
and boolean options, ``priority``, ``avoidMoves``/``allowMoves``; the first failing check
produces ``{"id", "field", "error"}`` and the query is dropped. Unknown top-level keys give a
warning each (``{"id", "field", "warning"}``) and the query still runs. Move legality is
checked afterwards by replaying the moves (``agent.protocol.replay``), which reports
``Illegal move N: LOC`` on field ``moves``.

Messages are KataGo's exact strings where they are interface facts (clients match on
``Illegal move``); the komi range is v1.17's [-400, 400].
"""

from __future__ import annotations

import math
from typing import Any

from agent.engines.base import XY, AnalysisRequest
from agent.errors import CoordinateError, QueryError, RulesError
from agent.game.coords import MAX_SIZE, parse_gtp_xy
from agent.game.rules import Rules, komi_is_valid, parse_rules
from agent.search.params import SearchParams, override_query_settings

MAX_PRIORITY = 0x3FFFFFFFFFFFFFFF
MOVES_SHAPE = 'Must be an array of pairs of the form: ["b" or "w", GTP board vertex]'
AVOID_SHAPE = "Must be a list of dicts with subfields 'player', 'moves', 'untilDepth'"
KOMI_MSG = "Must be a integer or half-integer from -400.0 to 400.0"
UNUSED_FIELD_MSG = (
    "Unexpected or unused field, do you have a typo? "
    "(set warnUnusedFields=false in the config to disable this warning)"
)

EXPECTED_KEYS = frozenset(
    {
        "id",
        "action",
        "moves",
        "initialStones",
        "initialPlayer",
        "rules",
        "komi",
        "whiteHandicapBonus",
        "boardXSize",
        "boardYSize",
        "analyzeTurns",
        "maxVisits",
        "rootPolicyTemperature",
        "rootFpuReductionMax",
        "analysisPVLen",
        "includeOwnership",
        "includeOwnershipStdev",
        "includeMovesOwnership",
        "includeMovesOwnershipStdev",
        "includePolicy",
        "includePVVisits",
        "includeNoResultValue",
        "avoidMoves",
        "allowMoves",
        "overrideSettings",
        "reportDuringSearchEvery",
        "firstReportDuringSearchAfter",
        "priority",
        "priorities",
    }
)


def finals_expected(query: dict[str, Any]) -> int:
    """How many final responses (``isDuringSearch: false``) a query gets: one per *distinct* turn.

    KataGo marks the turns to analyse in an array of flags (``cpp/command/analysis.cpp``), so
    ``"analyzeTurns": [0, 0, 0]`` analyses turn 0 once and ``[]`` analyses nothing (no response
    at all). An action, or a query without ``analyzeTurns``, gets one. A malformed list gets one
    (the field error). Transports wait for exactly this many finals (or one error).
    """
    if "action" in query:
        return 1
    turns = query.get("analyzeTurns")
    if not isinstance(turns, list) or not all(_is_int(t) for t in turns):
        return 1
    return len(set(turns))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _integer(q: dict[str, Any], key: str, lo: int, hi: int, msg: str) -> int:
    v = q[key]
    if not _is_int(v) or v < lo or v > hi:
        raise QueryError(msg, key)
    return int(v)


def _double(q: dict[str, Any], key: str, lo: float, hi: float, msg: str) -> float:
    v = q[key]
    if not _is_num(v) or not math.isfinite(float(v)) or v < lo or v > hi:
        raise QueryError(msg, key)
    return float(v)


def _boolean(q: dict[str, Any], key: str) -> bool:
    v = q[key]
    if not isinstance(v, bool):
        raise QueryError("Must be a boolean", key)
    return v


def parse_player(text: Any) -> str | None:
    """KataGo's ``PlayerIO::tryParsePlayer``: b/w/black/white, case-insensitive."""
    if not isinstance(text, str):
        return None
    s = text.strip().lower()
    if s in ("b", "black"):
        return "B"
    if s in ("w", "white"):
        return "W"
    return None


def _vertex(text: str, x: int, y: int, allow_pass: bool, key: str) -> XY | None:
    try:
        xy = parse_gtp_xy(text, x, y)
    except CoordinateError as exc:
        raise QueryError(f"Could not parse board location: {text}", key) from exc
    if xy is None and not allow_pass:
        raise QueryError(f"Could not parse board location: {text}", key)
    return xy


def _moves(q: dict[str, Any], key: str, x: int, y: int, allow_pass: bool) -> list[tuple[str, XY | None]]:
    arr = q[key]
    if not isinstance(arr, list):
        raise QueryError(MOVES_SHAPE, key)
    out: list[tuple[str, XY | None]] = []
    for elt in arr:
        if not isinstance(elt, list) or len(elt) != 2:
            raise QueryError(MOVES_SHAPE, key)
        s0, s1 = elt
        if not isinstance(s0, str) or not isinstance(s1, str):
            raise QueryError(MOVES_SHAPE, key)
        pla = parse_player(s0)
        if pla is None:
            raise QueryError(f"Could not parse player: {s0}", key)
        out.append((pla, _vertex(s1, x, y, allow_pass, key)))
    return out


def int_list(v: Any) -> list[int] | None:
    """``v`` as a list of integers (booleans are not integers), or None."""
    if not isinstance(v, list) or not all(_is_int(e) for e in v):
        return None
    return [int(e) for e in v]


def _board_size(q: dict[str, Any]) -> tuple[int, int]:
    msg = f"Must provide an integer from 2 to {MAX_SIZE}"
    for key in ("boardXSize", "boardYSize"):
        if key not in q:
            raise QueryError(msg, key)
    return _integer(q, "boardXSize", 2, MAX_SIZE, msg), _integer(q, "boardYSize", 2, MAX_SIZE, msg)


def _rules(q: dict[str, Any]) -> Rules:
    if "rules" not in q or not isinstance(q["rules"], str | dict):
        raise QueryError(
            'Must specify rules string, such as "chinese" or "tromp-taylor", '
            "or a JSON object with detailed rules parameters.",
            "rules",
        )
    try:
        rules = parse_rules(q["rules"])
    except RulesError as exc:
        raise QueryError(str(exc), "rules") from exc
    if "komi" in q:
        komi = _double(q, "komi", -400.0, 400.0, KOMI_MSG)
        if not komi_is_valid(komi):
            raise QueryError(KOMI_MSG, "komi")
        rules = rules.with_komi(komi)
    if "whiteHandicapBonus" in q:
        whb = q["whiteHandicapBonus"]
        if not isinstance(whb, str):
            raise QueryError("Must be a string", "whiteHandicapBonus")
        if whb.strip().upper() not in ("0", "N", "N-1"):
            raise QueryError(f"Unknown whiteHandicapBonus rule: {whb}", "whiteHandicapBonus")
        from dataclasses import replace

        rules = replace(rules, white_handicap_bonus=whb.strip().upper())
    return rules


def _avoid(q: dict[str, Any], x: int, y: int) -> dict[str, dict[XY | None, int]]:
    has_allow, has_avoid = "allowMoves" in q, "avoidMoves" in q
    if not (has_allow or has_avoid):
        return {}
    if has_allow and has_avoid:
        raise QueryError("Cannot specify both allowMoves and avoidMoves", "allowMoves")
    key = "allowMoves" if has_allow else "avoidMoves"
    lst = q[key]
    if not isinstance(lst, list):
        raise QueryError(AVOID_SHAPE, key)
    if has_allow and len(lst) > 1:
        raise QueryError("Currently allowMoves only allows one entry", key)
    out: dict[str, dict[XY | None, int]] = {}
    all_points: list[XY | None] = [(i, j) for j in range(y) for i in range(x)]
    all_points.append(None)
    for entry in lst:
        if not isinstance(entry, dict) or not {"moves", "untilDepth", "player"} <= entry.keys():
            raise QueryError(AVOID_SHAPE, key)
        pla = parse_player(entry["player"])
        if pla is None:
            raise QueryError('Must be "b" or "w"', "player")
        locs_raw = entry["moves"]
        if not isinstance(locs_raw, list) or not all(isinstance(s, str) for s in locs_raw):
            raise QueryError("Must be an array of GTP board vertices", "moves")
        locs = [_vertex(s, x, y, True, "moves") for s in locs_raw]
        until = entry["untilDepth"]
        if not _is_int(until) or until < 1 or until > 1_000_000_000:
            raise QueryError("Must be a positive integer", "untilDepth")
        table = out.setdefault(pla, {})
        if has_allow:
            for p in all_points:
                table[p] = int(until)
            for p in locs:
                table.pop(p, None)
        else:
            for p in locs:
                table[p] = int(until)
    return out


def parse_query(
    q: dict[str, Any], defaults: SearchParams, *, default_pv_len: int = 15, warn_unused: bool = True
) -> AnalysisRequest:
    """Validate an analysis query (not an action). Raises ``QueryError`` with ``field`` set.

    ``q["id"]`` must already be a string. Move legality is not checked here.
    """
    qid = q["id"]
    x, y = _board_size(q)
    stones = _moves(q, "initialStones", x, y, False) if "initialStones" in q else []
    if "moves" not in q:
        raise QueryError("Must specify an array of [player,location] pairs", "moves")
    moves = _moves(q, "moves", x, y, True)
    initial_player = None
    if "initialPlayer" in q:
        initial_player = parse_player(q["initialPlayer"])
        if initial_player is None:
            raise QueryError('Must be "b" or "w"', "initialPlayer")
    if "analyzeTurns" in q:
        turns = int_list(q["analyzeTurns"])
        if turns is None:
            raise QueryError("Must specify an array of integers indicating turns to analyze", "analyzeTurns")
        for t in turns:
            if t < 0 or t > len(moves):
                raise QueryError(f"Invalid turn number: {t}", "analyzeTurns")
        analyze = tuple(sorted(set(turns)))
    else:
        turns = None
        analyze = (len(moves),)
    priorities: dict[int, int] = {}
    if "priorities" in q:
        prios = int_list(q["priorities"])
        if prios is None:
            raise QueryError("Must specify an array of integers indicating priorities", "priorities")
        if turns is None:
            raise QueryError("Can only specify when also specifying analyzeTurns", "priorities")
        if len(prios) != len(turns):
            raise QueryError("Must be of matching length to analyzeTurns", "priorities")
        for t, p in zip(turns, prios, strict=True):
            if abs(p) > MAX_PRIORITY:
                raise QueryError(f"Invalid priority: {p}", "priorities")
            priorities[t] = p
    rules = _rules(q)
    params = defaults
    warnings: list[tuple[str, str]] = []
    if "overrideSettings" in q:
        settings = q["overrideSettings"]
        if not isinstance(settings, dict):
            raise QueryError("Must be an object", "overrideSettings")
        params, unknown = override_query_settings(params, settings)
        if unknown:
            warnings.append(("overrideSettings", "Unknown config params: " + ",".join(sorted(unknown))))
    from dataclasses import replace

    if "maxVisits" in q:
        params = replace(
            params, max_visits=_integer(q, "maxVisits", 1, 1 << 50, "Must be an integer from 1 to 2^50")
        )
    pv_len = default_pv_len
    if "analysisPVLen" in q:
        pv_len = _integer(q, "analysisPVLen", 1, 1000, "Must be an integer from 1 to 1000")
    if "rootFpuReductionMax" in q:
        v = _double(q, "rootFpuReductionMax", 0.0, 2.0, "Must be a number from 0.0 to 2.0")
        params = replace(params, root_fpu_reduction_max=v)
    if "rootPolicyTemperature" in q:
        v = _double(q, "rootPolicyTemperature", 0.01, 100.0, "Must be a number from 0.01 to 100.0")
        params = replace(params, root_policy_temperature=v)
    flags = {}
    for key in (
        "includeMovesOwnership",
        "includeMovesOwnershipStdev",
        "includeOwnership",
        "includeOwnershipStdev",
        "includePolicy",
        "includePVVisits",
        "includeNoResultValue",
    ):
        flags[key] = _boolean(q, key) if key in q else False
    report_every = first_after = None
    secs = "Must be number of seconds from 0.001 to 1000000.0"
    if "reportDuringSearchEvery" in q:
        report_every = _double(q, "reportDuringSearchEvery", 0.001, 1e6, secs)
        first_after = report_every
    if "firstReportDuringSearchAfter" in q:
        first_after = _double(q, "firstReportDuringSearchAfter", 0.001, 1e6, secs)
        if report_every is None:
            report_every = 1e30
    priority = 0
    if "priority" in q:
        if "priorities" in q:
            raise QueryError("Cannot specify both priority and priorities", "priority")
        priority = _integer(
            q, "priority", -MAX_PRIORITY, MAX_PRIORITY, "Must be a number between -2^62 and 2^62"
        )
    avoid = _avoid(q, x, y)
    if warn_unused:
        warnings.extend((k, UNUSED_FIELD_MSG) for k in q if k not in EXPECTED_KEYS)
    if not priorities:
        priorities = dict.fromkeys(analyze, priority)
    return AnalysisRequest(
        id=qid,
        x_size=x,
        y_size=y,
        initial_stones=tuple(stones),  # type: ignore[arg-type]
        moves=tuple(moves),
        initial_player=initial_player,
        rules=rules,
        analyze_turns=analyze,
        priorities=priorities,
        params=params,
        analysis_pv_len=pv_len,
        include_ownership=flags["includeOwnership"],
        include_ownership_stdev=flags["includeOwnershipStdev"],
        include_moves_ownership=flags["includeMovesOwnership"],
        include_moves_ownership_stdev=flags["includeMovesOwnershipStdev"],
        include_policy=flags["includePolicy"],
        include_pv_visits=flags["includePVVisits"],
        include_no_result_value=flags["includeNoResultValue"],
        report_every=report_every,
        first_report_after=first_after,
        avoid=avoid,
        warnings=tuple(warnings),
    )
