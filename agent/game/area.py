"""Pass-alive stones and territory: KataGo's Benson variant (spec §3.7), for V7 channels 18-19.

``calculate_area`` runs the per-colour Benson procedure for Black, then White (later marks
overwrite earlier ones), and optionally marks the remaining stones with their own colour:

* *regions* are the 4-connected components of "empty or opponent stone" points that contain at
  least one empty point;
* a region is *vital* for a chain when every point of it (only its empty points when suicide is
  illegal) touches that chain; chains with fewer than two vital regions die, iteratively, and
  regions touching dead chains stop counting;
* surviving chains are pass-alive; small regions (at most one point not touching the colour)
  and, with ``safe_big``, opponent-free regions bordered only by survivors become territory;
  with ``unsafe_big`` any opponent-free region is marked where nothing else was.

``independent_life_area`` removes seki-like areas from that result (tax rules).
Results are lists indexed by ``loc`` holding ``EMPTY``/``BLACK``/``WHITE``.
"""

from __future__ import annotations

from agent.game.board import BLACK, EMPTY, WALL, WHITE, Board


def _area_for_pla(
    board: Board, pla: int, safe_big: bool, unsafe_big: bool, suicide: bool, result: list[int]
) -> None:
    color = board.color
    cid = board.cid
    stride = board.stride
    o = 3 - pla
    locs = board.geo.all_locs()
    region_of = [-1] * len(color)
    regions: list[list[int]] = []
    vital_for: list[set[int]] = []
    internal: list[int] = []
    contains_opp: list[bool] = []
    at_least_one_pla = any(color[h] == pla for h in board.stones)
    for seed in locs:
        if color[seed] != EMPTY or region_of[seed] >= 0:
            continue
        rid = len(regions)
        pts = [seed]
        region_of[seed] = rid
        vf: set[int] | None = None
        n_int = 0
        has_opp = False
        i = 0
        while i < len(pts):
            p = pts[i]
            i += 1
            c = color[p]
            touches_pla = False
            adj: list[int] = []
            for n in (p - stride, p - 1, p + 1, p + stride):
                cn = color[n]
                if cn == pla:
                    touches_pla = True
                    adj.append(cid[n])
                elif cn != WALL and region_of[n] < 0:
                    region_of[n] = rid
                    pts.append(n)
            if c == o:
                has_opp = True
                if not suicide:
                    if not touches_pla and n_int < 2:
                        n_int += 1
                    continue
            if vf is None:
                vf = set(adj)
            elif vf:
                vf.intersection_update(adj)
            if not touches_pla and n_int < 2:
                n_int += 1
        regions.append(pts)
        vital_for.append(vf or set())
        internal.append(n_int)
        contains_opp.append(has_opp)
    heads = [h for h in board.stones if color[h] == pla]
    vital = dict.fromkeys(heads, 0)
    for vf_set in vital_for:
        for h in vf_set:
            vital[h] += 1
    killed: set[int] = set()
    borders_killed = [False] * len(regions)
    changed = True
    while changed:
        changed = False
        for h in heads:
            if h in killed or vital[h] >= 2:
                continue
            killed.add(h)
            changed = True
            for s in board.stones[h]:
                for n in (s - stride, s - 1, s + 1, s + stride):
                    rid2 = region_of[n]
                    if rid2 >= 0 and not borders_killed[rid2]:
                        borders_killed[rid2] = True
                        for h2 in vital_for[rid2]:
                            vital[h2] -= 1
    for h in heads:
        if h not in killed:
            for s in board.stones[h]:
                result[s] = pla
    if not at_least_one_pla:
        return
    for rid, pts in enumerate(regions):
        if (internal[rid] <= 1 and not borders_killed[rid]) or (
            safe_big and not contains_opp[rid] and not borders_killed[rid]
        ):
            for p in pts:
                result[p] = pla
        elif unsafe_big and not contains_opp[rid]:
            for p in pts:
                if result[p] == EMPTY:
                    result[p] = pla


def calculate_area(
    board: Board, non_pass_alive_stones: bool, safe_big: bool, unsafe_big: bool, suicide: bool
) -> list[int]:
    """KataGo's ``Board::calculateArea``."""
    result = [EMPTY] * len(board.color)
    _area_for_pla(board, BLACK, safe_big, unsafe_big, suicide, result)
    _area_for_pla(board, WHITE, safe_big, unsafe_big, suicide, result)
    if non_pass_alive_stones:
        color = board.color
        for loc in board.geo.all_locs():
            if result[loc] == EMPTY and color[loc] != EMPTY:
                result[loc] = color[loc]
    return result


def independent_life_area(
    board: Board, keep_territories: bool, keep_stones: bool, suicide: bool
) -> tuple[list[int], int]:
    """KataGo's ``calculateIndependentLifeArea``: returns the area and
    ``whiteMinusBlackIndependentLifeRegionCount``."""
    basic = calculate_area(board, True, True, True, suicide)
    color = board.color
    stride = board.stride
    locs = board.geo.all_locs()
    seki = [False] * len(color)

    def flood(start: int, c: int, mark: list[bool]) -> list[int]:
        pts = [start]
        mark[start] = True
        i = 0
        while i < len(pts):
            p = pts[i]
            i += 1
            for n in (p - stride, p - 1, p + 1, p + stride):
                if color[n] != WALL and not mark[n] and basic[n] == c:
                    mark[n] = True
                    pts.append(n)
        return pts

    for p in locs:
        c = basic[p]
        if c == EMPTY or seki[p]:
            continue
        is_seki = color[p] == c and len(board.libs[board.cid[p]]) == 1
        if not is_seki:
            for n in (p - stride, p - 1, p + 1, p + stride):
                if color[n] == EMPTY and basic[n] == EMPTY:
                    is_seki = True
                    break
        if is_seki:
            flood(p, c, seki)
    result = [EMPTY] * len(color)
    count = 0
    done = seki[:]
    for p in locs:
        c = basic[p]
        if c == EMPTY or done[p]:
            continue
        for q in flood(p, c, done):
            result[q] = c
        count += 1 if c == WHITE else -1
    for p in locs:
        c = basic[p]
        if c == EMPTY:
            continue
        if keep_territories and c != color[p]:
            result[p] = c
        if keep_stones and c == color[p]:
            result[p] = c
    return result, count
