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

import numpy as np
import numpy.typing as npt

from agent.game.board import BLACK, EMPTY, WALL, WHITE, Board


def _masks(board: Board) -> tuple[int, int, int]:
    """Bitmasks (bit ``loc``) of the empty points, Black stones and White stones."""
    arr = np.frombuffer(bytes(board.color), dtype=np.uint8)
    return (
        int.from_bytes(np.packbits(arr == EMPTY, bitorder="little").tobytes(), "little"),
        int.from_bytes(np.packbits(arr == BLACK, bitorder="little").tobytes(), "little"),
        int.from_bytes(np.packbits(arr == WHITE, bitorder="little").tobytes(), "little"),
    )


def _dilate(m: int, s: int) -> int:
    """``m`` plus its 4-neighbours (may reach padding: callers mask)."""
    return m | (m << 1) | (m >> 1) | (m << s) | (m >> s)


def _flood(seed: int, within: int, s: int) -> int:
    r = seed
    while True:
        n = (r | (r << 1) | (r >> 1) | (r << s) | (r >> s)) & within
        if n == r:
            return r
        r = n


def _bits(m: int) -> list[int]:
    out = []
    while m:
        low = m & -m
        out.append(low.bit_length() - 1)
        m ^= low
    return out


def _area_for_pla(
    board: Board,
    pla: int,
    heads: list[int],
    empty: int,
    own: int,
    opp: int,
    safe_big: bool,
    unsafe_big: bool,
    suicide: bool,
    res: list[int],
) -> None:
    """One colour's Benson pass on bitmasks (``heads``: its chains); ``res[BLACK]``/``res[WHITE]``
    are the marks so far, and this colour's marks overwrite the other's (the later pass wins)."""
    if not own:
        return  # nothing of ``pla`` can be alive, and a stoneless colour marks no region
    s = board.stride
    color = board.color
    cid = board.cid
    stones = board.stones
    o = 3 - pla
    within = empty | opp
    touch = _dilate(own, s)
    regions: list[int] = []
    rem = empty
    while rem:
        r = _flood(rem & -rem, within, s)
        regions.append(r)
        rem &= ~r
    # chains' neighbourhoods, built on demand (only chains next to a region's first point)
    nbhd: dict[int, int] = {}

    def chain_nbhd(h: int) -> int:
        m = nbhd.get(h)
        if m is None:
            st = 0
            for q in stones[h]:
                st |= 1 << q
            m = nbhd[h] = _dilate(st, s)
        return m

    libs = board.libs
    vital = dict.fromkeys(heads, 0)
    vital_for: list[list[int]] = []
    for r in regions:
        # vital for ``h``: every empty point of the region (every point, under suicide rules)
        # is next to ``h``; ``h`` must then touch the region's first such point
        req = r if suicide else r & empty
        n_empty = (r & empty).bit_count()
        low = req & -req
        p = low.bit_length() - 1
        vf: list[int] = []
        for n in (p - s, p - 1, p + 1, p + s):
            if color[n] == pla:
                h = cid[n]
                if h in vf or len(libs[h]) < n_empty:
                    continue
                if suicide:
                    ok = not req & ~chain_nbhd(h)
                else:
                    lb = libs[h]
                    ok = all(q in lb for q in _bits(req))
                if ok:
                    vf.append(h)
                    vital[h] += 1
        vital_for.append(vf)
    nreg = len(regions)
    borders_killed = [False] * nreg
    # chains with fewer than two vital regions die, round after round (regions next to a dead
    # chain stop counting as vital)
    alive = {h for h in heads if vital[h] >= 2}
    dying = len(alive) < len(heads)
    alive_stones = own
    while dying:
        now = 0
        for h in alive:
            for q in stones[h]:
                now |= 1 << q
        killed = _dilate(alive_stones & ~now, s)
        alive_stones = now
        for k in range(nreg):
            if not borders_killed[k] and regions[k] & killed:
                borders_killed[k] = True
                for h in vital_for[k]:
                    vital[h] -= 1
        dead = [h for h in alive if vital[h] < 2]
        alive.difference_update(dead)
        dying = bool(dead)
    mark = alive_stones
    weak = 0
    for k in range(nreg):
        r = regions[k]
        has_opp = bool(r & opp)
        if not borders_killed[k] and ((r & ~touch).bit_count() <= 1 or (safe_big and not has_opp)):
            mark |= r
        elif unsafe_big and not has_opp:
            weak |= r
    res[pla] |= mark
    res[o] &= ~mark
    res[pla] |= weak & ~res[o]


def area_masks(
    board: Board, non_pass_alive_stones: bool, safe_big: bool, unsafe_big: bool, suicide: bool
) -> tuple[int, int]:
    """``calculate_area`` as bitmasks (bit ``loc``): ``(black, white)``."""
    empty, black, white = _masks(board)
    heads: tuple[list[int], list[int], list[int]] = ([], [], [])
    color = board.color
    for h in board.stones:
        heads[color[h]].append(h)
    res = [0, 0, 0]
    _area_for_pla(board, BLACK, heads[BLACK], empty, black, white, safe_big, unsafe_big, suicide, res)
    _area_for_pla(board, WHITE, heads[WHITE], empty, white, black, safe_big, unsafe_big, suicide, res)
    if non_pass_alive_stones:
        free = ~(res[BLACK] | res[WHITE])
        res[BLACK] |= black & free
        res[WHITE] |= white & free
    return res[BLACK], res[WHITE]


def mask_to_bool(m: int, n: int) -> npt.NDArray[np.bool_]:
    """Bitmask to a bool array of length ``n`` (index = bit)."""
    raw = np.frombuffer(m.to_bytes((n + 7) // 8, "little"), dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little")[:n].astype(bool)


def calculate_area(
    board: Board, non_pass_alive_stones: bool, safe_big: bool, unsafe_big: bool, suicide: bool
) -> list[int]:
    """KataGo's ``Board::calculateArea``."""
    b, w = area_masks(board, non_pass_alive_stones, safe_big, unsafe_big, suicide)
    n = len(board.color)
    out = np.zeros(n, dtype=np.int8)
    out[mask_to_bool(b, n)] = BLACK
    out[mask_to_bool(w, n)] = WHITE
    result: list[int] = out.tolist()
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
