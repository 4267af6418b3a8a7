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


class _EmptyRegions:
    """4-connected components of empty points, shared by both colours' Benson passes.

    Per component: its points, and for each colour ``c`` the heads of the ``c`` chains it
    touches (``adj[c]``) and how many of its points touch no ``c`` stone (``lonely[c]``).
    """

    __slots__ = ("adj", "comp_of", "lonely", "pts")

    def __init__(self, board: Board) -> None:
        color = board.color
        cid = board.cid
        s = board.stride
        comp_of = [-1] * len(color)
        pts_all: list[list[int]] = []
        adj_b: list[set[int]] = []
        adj_w: list[set[int]] = []
        lonely_b: list[int] = []
        lonely_w: list[int] = []
        for seed in board.geo.all_locs():
            if color[seed] != EMPTY or comp_of[seed] >= 0:
                continue
            rid = len(pts_all)
            comp_of[seed] = rid
            pts = [seed]
            ab: set[int] = set()
            aw: set[int] = set()
            nb = nw = 0
            i = 0
            while i < len(pts):
                p = pts[i]
                i += 1
                tb = tw = False
                for n in (p - s, p - 1, p + 1, p + s):
                    c = color[n]
                    if c == EMPTY:
                        if comp_of[n] < 0:
                            comp_of[n] = rid
                            pts.append(n)
                    elif c == BLACK:
                        tb = True
                        ab.add(cid[n])
                    elif c == WHITE:
                        tw = True
                        aw.add(cid[n])
                if not tb:
                    nb += 1
                if not tw:
                    nw += 1
            pts_all.append(pts)
            adj_b.append(ab)
            adj_w.append(aw)
            lonely_b.append(nb)
            lonely_w.append(nw)
        self.comp_of = comp_of
        self.pts = pts_all
        self.adj: tuple[list[set[int]], list[set[int]], list[set[int]]] = ([], adj_b, adj_w)
        self.lonely: tuple[list[int], list[int], list[int]] = ([], lonely_b, lonely_w)


def _area_for_pla(
    board: Board,
    pla: int,
    safe_big: bool,
    unsafe_big: bool,
    suicide: bool,
    result: list[int],
    er: _EmptyRegions,
) -> None:
    color = board.color
    stones = board.stones
    libs = board.libs
    o = 3 - pla
    heads = [h for h in stones if color[h] == pla]
    if not heads:
        return  # nothing of ``pla`` can be alive, and no region is marked for a stoneless colour
    cpts = er.pts
    cadj = er.adj[pla]
    ncomp = len(cpts)
    # chains each empty component is vital for: every point of it is a liberty of the chain
    cvital: list[set[int]] = []
    seen: set[int] = set()
    multi = False
    for r in range(ncomp):
        pts = cpts[r]
        vs = {h for h in cadj[r] if len(libs[h]) >= len(pts) and libs[h].issuperset(pts)}
        cvital.append(vs)
        for h in vs:
            if h in seen:
                multi = True
            seen.add(h)
    if not multi:
        # No chain is vital-adjacent to two components, so none has two vital regions (a region's
        # vital set is inside each of its components'): every chain dies, every region borders a
        # dead chain, and only opponent-free regions (single empty components touching no
        # opponent stone) can be marked, by ``unsafe_big``.
        if unsafe_big:
            oadj = er.adj[o]
            for r in range(ncomp):
                if not oadj[r]:
                    for p in cpts[r]:
                        if result[p] == EMPTY:
                            result[p] = pla
        return
    _benson(board, pla, o, heads, safe_big, unsafe_big, suicide, result, er, cvital)


def _benson(
    board: Board,
    pla: int,
    o: int,
    heads: list[int],
    safe_big: bool,
    unsafe_big: bool,
    suicide: bool,
    result: list[int],
    er: _EmptyRegions,
    cvital: list[set[int]],
) -> None:
    color = board.color
    cid = board.cid
    stride = board.stride
    stones = board.stones
    libs = board.libs
    comp_of = er.comp_of
    ncomp = len(er.pts)
    # regions: empty components joined through the opponent chains touching them
    parent = list(range(ncomp))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    opp_heads = [h for h in stones if color[h] == o and libs[h]]
    for h in opp_heads:
        it = iter(libs[h])
        r0 = find(comp_of[next(it)])
        for lib in it:
            r = find(comp_of[lib])
            if r != r0:
                parent[r] = r0
    reg_index: dict[int, int] = {}
    reg_of_comp = [0] * ncomp
    for c in range(ncomp):
        root = find(c)
        k = reg_index.get(root)
        if k is None:
            k = reg_index[root] = len(reg_index)
        reg_of_comp[c] = k
    nreg = len(reg_index)
    vital_for: list[set[int] | None] = [None] * nreg
    internal = [0] * nreg
    contains_opp = [False] * nreg
    touching: list[set[int]] = [set() for _ in range(nreg)]
    pts_of: list[list[int]] = [[] for _ in range(nreg)]
    cadj = er.adj[pla]
    clonely = er.lonely[pla]
    for c in range(ncomp):
        k = reg_of_comp[c]
        vf = vital_for[k]
        vital_for[k] = set(cvital[c]) if vf is None else (vf & cvital[c] if vf else vf)
        internal[k] += clonely[c]
        touching[k] |= cadj[c]
        pts_of[k].extend(er.pts[c])
    for h in opp_heads:
        k = reg_of_comp[comp_of[next(iter(libs[h]))]]
        contains_opp[k] = True
        st = stones[h]
        pts_of[k].extend(st)
        tk = touching[k]
        vf = vital_for[k]
        for s in st:
            adj: list[int] = []
            for n in (s - stride, s - 1, s + 1, s + stride):
                if color[n] == pla:
                    adj.append(cid[n])
            if not adj:
                internal[k] += 1
            tk.update(adj)
            if suicide and vf:
                vf.intersection_update(adj)
    vital = dict.fromkeys(heads, 0)
    regions_touching: dict[int, list[int]] = {h: [] for h in heads}
    for k in range(nreg):
        for h in vital_for[k] or ():
            vital[h] += 1
        for h in touching[k]:
            regions_touching[h].append(k)
    killed: set[int] = set()
    borders_killed = [False] * nreg
    changed = True
    while changed:
        changed = False
        for h in heads:
            if h in killed or vital[h] >= 2:
                continue
            killed.add(h)
            changed = True
            for k in regions_touching[h]:
                if not borders_killed[k]:
                    borders_killed[k] = True
                    for h2 in vital_for[k] or ():
                        vital[h2] -= 1
    for h in heads:
        if h not in killed:
            for s in stones[h]:
                result[s] = pla
    for k in range(nreg):
        if (internal[k] <= 1 and not borders_killed[k]) or (
            safe_big and not contains_opp[k] and not borders_killed[k]
        ):
            for p in pts_of[k]:
                result[p] = pla
        elif unsafe_big and not contains_opp[k]:
            for p in pts_of[k]:
                if result[p] == EMPTY:
                    result[p] = pla


def calculate_area(
    board: Board, non_pass_alive_stones: bool, safe_big: bool, unsafe_big: bool, suicide: bool
) -> list[int]:
    """KataGo's ``Board::calculateArea``."""
    result = [EMPTY] * len(board.color)
    er = _EmptyRegions(board)
    _area_for_pla(board, BLACK, safe_big, unsafe_big, suicide, result, er)
    _area_for_pla(board, WHITE, safe_big, unsafe_big, suicide, result, er)
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
