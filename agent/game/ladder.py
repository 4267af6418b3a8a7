"""KataGo's ladder search and the per-board ladder scan behind V7 channels 14-17 (spec §3.6).

``ladder_captured`` is a depth-first AND/OR search on a scratch board (moves are played and
undone): the attacker keeps the defender chain at two liberties and tries its liberties, the
defender tries captures of attacker chains in atari and then its own liberty. Fast bounds cut
most nodes: a defender who would get 3 liberties escapes at once, a lone defender move that
cannot reach 2 liberties is captured. Limits mirror KataGo's: maximum depth
``x*y*3/2 + 1`` (reaching it counts as captured) and a 25 000-move budget per search, whose
exhaustion returns "not captured" and leaves the scratch board's ko point cleared (a KataGo
quirk that later searches on the same scratch board inherit).

``ladder_scan(board)`` runs ``iterLadders``: every chain with 1 or 2 liberties, once per chain,
in row-major order; results are cached on the (immutable, snapshotted) board.

Reuse between related boards (``ladder_scan(board, parent=...)``, a search child and its parent):
each chain's search records a *footprint*, a bitmask of every point whose colour can influence it.
The search only looks at its candidate moves, the defender's stones and their neighbours, and at
the stones and liberties of chains found there, so the footprint is the closed neighbourhood of
those points plus, for every chain meeting it, the chain's stones and their neighbours. When the
two boards agree on every footprint point (and on the ko point where the footprint could see it),
the search would replay move for move, so its result is taken over unchanged. A scan in which a
search ran out of budget (the ko quirk above couples later searches) is never reused from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from agent.game.board import BLACK, EMPTY, WALL, WHITE, Board
from agent.game.coords import NULL_LOC, Geometry

MAX_LADDER_MOVES = 25_000


class _BudgetExhausted(Exception):
    pass


@dataclass
class LadderScan:
    """Stones of ladder-captured chains, and ladder-working moves by the *defender's* colour."""

    laddered: list[int] = field(default_factory=list)
    working: dict[int, list[int]] = field(default_factory=lambda: {BLACK: [], WHITE: []})
    # per searched chain head: (captured, working moves, footprint bitmask)
    entries: dict[int, tuple[bool, list[int], int]] = field(default_factory=dict)
    exhausted: bool = False
    reused: int = 0


class _Search:
    __slots__ = ("b", "budget", "limit", "loc", "touched")

    def __init__(self, board: Board, loc: int, budget: list[int], touched: list[int] | None = None) -> None:
        self.b = board
        self.loc = loc
        self.budget = budget
        self.limit = board.x_size * board.y_size * 3 // 2 + 1
        self.touched = touched  # candidate moves looked at (footprint), when recorded

    def _libs_if_played(self, m: int, pla: int) -> int:
        b = self.b
        u = b.play(m, pla)
        n = len(b.libs[b.cid[m]]) if b.color[m] == pla else 0
        b.undo(u)
        return n

    def _is_ko_capture_for(self, m: int, attacker: int, defender: int) -> bool:
        b = self.b
        color = b.color
        in_atari = 0
        single = False
        for n in b.neighbors(m):
            c = color[n]
            if c == WALL:
                continue
            if c != defender:
                return False
            if len(b.libs[b.cid[n]]) == 1:
                in_atari += 1
                single = len(b.stones[b.cid[n]]) == 1
        return in_atari == 1 and single

    def _attacker_move_score(self, m: int, defender: int) -> int:
        b = self.b
        color = b.color
        score = 0
        for n in b.neighbors(m):
            c = color[n]
            if c == EMPTY:
                score += 2
            elif c == defender:
                nl = len(b.libs[b.cid[n]])
                if nl > 1:
                    score += 2 * nl - 3
        return score

    def node(self, depth: int, defender_first: bool) -> bool:
        """True if the defender chain at ``self.loc`` is captured from this node."""
        if depth >= self.limit - 1:
            return True
        b = self.b
        color = b.color
        loc = self.loc
        defender = color[loc]
        attacker = 3 - defender
        head = b.cid[loc]
        libs = b.libs[head]
        nlibs = len(libs)
        stride = b.stride
        defender_to_move = (depth % 2 == 0) == defender_first
        moves: list[int]
        if not defender_to_move:
            if nlibs <= 1:
                return True
            if nlibs >= 3:
                return False
            a, c2 = libs
            if self.touched is not None:
                self.touched.append(a)
                self.touched.append(c2)
            ia = sum(1 for n in (a - stride, a - 1, a + 1, a + stride) if color[n] == EMPTY)
            ib = sum(1 for n in (c2 - stride, c2 - 1, c2 + 1, c2 + stride) if color[n] == EMPTY)
            if (
                ia == 0
                and ib == 0
                and self._is_ko_capture_for(a, attacker, defender)
                and self._is_ko_capture_for(c2, attacker, defender)
                and self._libs_if_played(a, defender) <= 2
                and self._libs_if_played(c2, defender) <= 2
                and not self._attacker_chain_in_atari(head, attacker)
            ):
                return True
            adjacent = c2 in (a - stride, a - 1, a + 1, a + stride)
            if not adjacent and ia >= 3 and ib >= 3:
                return False
            if not adjacent and ia >= 3:
                moves = [a]
            elif not adjacent and ib >= 3:
                moves = [c2]
            elif self._attacker_move_score(c2, defender) > self._attacker_move_score(a, defender):
                moves = [c2, a]
            else:
                moves = [a, c2]
            mover = attacker
        else:
            if nlibs >= 2 or b.ko_loc != NULL_LOC:
                return False
            moves = []
            seen: set[int] = set()
            for s in b.stones[head]:
                for n in (s - stride, s - 1, s + 1, s + stride):
                    if color[n] == attacker:
                        h2 = b.cid[n]
                        if h2 not in seen:
                            seen.add(h2)
                            l2 = b.libs[h2]
                            if len(l2) == 1:
                                (lib,) = l2
                                if lib not in moves:
                                    moves.append(lib)
            (own,) = libs
            if own not in moves:
                moves.append(own)
            if self.touched is not None:
                self.touched.extend(moves)
            n_empty, n_caps, cap_size, conn, max_conn = _extension(b, moves[-1], defender, NULL_LOC)
            if n_caps + max(max_conn, n_empty) >= 3:
                return False
            if len(moves) == 1 and n_empty + cap_size + conn <= 1:
                return True
            mover = defender
        for m in moves:
            if not b.is_legal(m, mover, False):
                continue
            self.budget[0] -= 1
            if self.budget[0] < 0:
                raise _BudgetExhausted
            u = b.play(m, mover)
            try:
                r = self.node(depth + 1, defender_first)
            finally:
                b.undo(u)
            if r == (not defender_to_move):
                return r
        return defender_to_move

    def _attacker_chain_in_atari(self, head: int, attacker: int) -> bool:
        b = self.b
        color = b.color
        stride = b.stride
        for s in b.stones[head]:
            for n in (s - stride, s - 1, s + 1, s + stride):
                if color[n] == attacker and len(b.libs[b.cid[n]]) == 1:
                    return True
        return False


def ladder_captured(
    board: Board, loc: int, defender_first: bool = True, budget: list[int] | None = None
) -> bool:
    """Is the chain at ``loc`` (1 liberty; 2 if not ``defender_first``) captured in a ladder?

    ``board`` is a scratch board: it is restored, except for the budget quirk (ko point cleared).
    """
    return _captured(board, loc, defender_first, budget, None)[0]


def _captured(
    board: Board, loc: int, defender_first: bool, budget: list[int] | None, touched: list[int] | None
) -> tuple[bool, bool]:
    """``(captured, budget exhausted)``; candidate moves are appended to ``touched``."""
    bud = budget if budget is not None else [MAX_LADDER_MOVES]
    saved_ko = board.ko_loc
    if defender_first:
        board.ko_loc = NULL_LOC
    try:
        r = _Search(board, loc, bud, touched).node(0, defender_first)
    except _BudgetExhausted:
        board.ko_loc = NULL_LOC
        return False, True
    board.ko_loc = saved_ko
    return r, False


def _attacker_first(board: Board, loc: int, touched: list[int] | None) -> tuple[bool, list[int], bool]:
    defender = board.color[loc]
    attacker = 3 - defender
    works: list[int] = []
    exhausted = False
    libs = list(board.libs[board.cid[loc]])
    if touched is not None:
        touched.extend(libs)
    for m in libs:
        other = libs[1] if m == libs[0] else libs[0]
        if _defender_surely_escapes(board, loc, m, other, defender):
            continue
        if board.is_legal(m, attacker, False):
            u = board.play(m, attacker)
            ok, ex = _captured(board, loc, True, None, touched)
            exhausted = exhausted or ex
            board.undo(u)
            if ok:
                works.append(m)
    return bool(works), works, exhausted


def _defender_surely_escapes(board: Board, loc: int, m: int, other: int, defender: int) -> bool:
    """After the attacker plays ``m``, would a defender stone at ``other`` surely have >= 3
    liberties? Then the defender-first search escapes at once, so ``m`` cannot work. Exact
    shortcut: an attacker stone at ``m`` only removes ``m`` itself as a liberty (captures only
    add liberties), so the bound is computed on the current board."""
    s = board.stride
    if m in (other - s, other - 1, other + 1, other + s):
        return False
    # the chain itself (liberties m and other) adds 2 - 1 - 1 = 0 there; captures are not counted
    n_empty, _, _, _, max_conn = _extension(board, other, defender, m)
    return max(max_conn, n_empty) >= 3


def _extension(board: Board, p: int, defender: int, taken: int) -> tuple[int, int, int, int, int]:
    """What a defender stone at empty ``p`` would join, once the point ``taken`` is no liberty
    (``NULL_LOC``: none): its empty neighbours; the adjacent attacker chains in atari and their
    stones (captures); the liberties the adjacent defender chains would add beyond ``p`` itself,
    summed and the most any one adds. Neighbours only, so a chain met twice counts twice."""
    s = board.stride
    color = board.color
    cid = board.cid
    libs = board.libs
    n_empty = n_caps = cap_size = conn = max_conn = 0
    for n in (p - s, p - 1, p + 1, p + s):
        c = color[n]
        if c == EMPTY:
            n_empty += 1
        elif c == defender:
            lb = libs[cid[n]]
            extra = len(lb) - 1 - (taken in lb)
            conn += extra
            if extra > max_conn:
                max_conn = extra
        elif c != WALL:
            h = cid[n]
            if len(libs[h]) == 1:
                n_caps += 1
                cap_size += len(board.stones[h])
    return n_empty, n_caps, cap_size, conn, max_conn


@lru_cache(maxsize=64)
def _closed_nbhd_masks(x_size: int, y_size: int) -> tuple[int, ...]:
    """Per loc: bitmask of the loc and its on-board neighbours (0 off the board)."""
    g = Geometry(x_size, y_size)
    stride = x_size + 1
    onb = set(g.all_locs())
    out = [0] * g.arr_size
    for p in onb:
        m = 1 << p
        for n in (p - stride, p - 1, p + 1, p + stride):
            if n in onb:
                m |= 1 << n
        out[p] = m
    return tuple(out)


def _footprint(board: Board, loc: int, touched: list[int], nbhd: tuple[int, ...]) -> int:
    """Points whose colour a search from ``board`` on the chain at ``loc`` can depend on.

    Colours are read around the candidate moves and around the defender chain, which grows by
    the chains it merges with (all next to a candidate move); chain liberties are read for chains
    found there. So: the closed neighbourhood of the candidates and defender stones, widened twice
    by "every chain meeting the set, with its stones' neighbours" (merged chains, then the chains
    whose liberties are counted around them).
    """
    zone = 0
    for p in board.stones[board.cid[loc]]:
        zone |= nbhd[p]
    for p in touched:
        zone |= nbhd[p]
    seen: set[int] = set()
    mask = _close(board, zone, zone, nbhd, seen)
    return _close(board, mask & ~zone, mask, nbhd, seen)


def _close(board: Board, probe: int, mask: int, nbhd: tuple[int, ...], seen: set[int]) -> int:
    """``mask`` plus the stones' neighbourhoods of every chain with a stone in ``probe``."""
    color = board.color
    cid = board.cid
    stones = board.stones
    z = probe
    while z:
        low = z & -z
        p = low.bit_length() - 1
        z ^= low
        if color[p] in (BLACK, WHITE):
            h = cid[p]
            if h not in seen:
                seen.add(h)
                for q in stones[h]:
                    mask |= nbhd[q]
    return mask


def _diff_mask(a: Board, b: Board) -> int:
    """Bitmask of the points whose colour differs between two boards of one size."""
    diff = np.frombuffer(bytes(a.color), dtype=np.uint8) != np.frombuffer(bytes(b.color), dtype=np.uint8)
    return int.from_bytes(np.packbits(diff, bitorder="little").tobytes(), "little")


def ladder_scan(board: Board, parent: Board | None = None) -> LadderScan:
    """KataGo's ``iterLadders`` over one board (cached on the board object).

    ``parent``: a board whose cached scan may be reused chain by chain (see the module notes);
    any board of the same size is correct, a search node's parent makes it pay off.
    """
    cached = board.cache.get("ladder") if board.cache is not None else None
    if isinstance(cached, LadderScan):
        return cached
    prev: LadderScan | None = None
    if parent is not None and parent is not board and parent.cache is not None:
        p = parent.cache.get("ladder")
        if (
            isinstance(p, LadderScan)
            and not p.exhausted
            and parent.x_size == board.x_size
            and parent.y_size == board.y_size
        ):
            prev = p
    out = _scan(board, parent, prev)
    if out.exhausted and prev is not None:
        out = _scan(board, None, None)  # the budget quirk couples searches: no reuse at all
    if board.cache is None:
        board.cache = {}
    board.cache["ladder"] = out
    return out


def _scan(board: Board, parent: Board | None, prev: LadderScan | None) -> LadderScan:
    out = LadderScan()
    scratch: Board | None = None
    color = board.color
    libs = board.libs
    nbhd = _closed_nbhd_masks(board.x_size, board.y_size)
    diff = 0
    ko_bits = 0
    if prev is not None and parent is not None:
        diff = _diff_mask(parent, board)
        if parent.ko_loc != board.ko_loc:
            ko_bits = (1 << parent.ko_loc if parent.ko_loc != NULL_LOC else 0) | (
                1 << board.ko_loc if board.ko_loc != NULL_LOC else 0
            )
    stones = board.stones
    # chains with 1 or 2 liberties in row-major order of their first stone (KataGo's scan order,
    # which matters through the budget quirk)
    todo = sorted((min(stones[h]), h) for h, lb in libs.items() if 0 < len(lb) <= 2)
    captured: list[int] = []
    for loc, head in todo:
        c = color[loc]
        nl = len(libs[head])
        entry: tuple[bool, list[int], int] | None = None
        if prev is not None and parent is not None and parent.color[loc] == c:
            old = prev.entries.get(parent.cid[loc])
            if old is not None and not (old[2] & (diff | ko_bits)):
                entry = old
                out.reused += 1
        if entry is None:
            if scratch is None:
                scratch = board.copy()
            touched: list[int] = []
            if nl == 1:
                r, ex = _captured(scratch, loc, True, None, touched)
                wm: list[int] = []
            else:
                r, wm, ex = _attacker_first(scratch, loc, touched)
            out.exhausted = out.exhausted or ex
            entry = (r, wm, _footprint(board, loc, touched, nbhd))
        out.entries[head] = entry
        r, wm, _ = entry
        if r:
            captured.extend(stones[head])
            out.working[c].extend(wm)
    captured.sort()
    out.laddered = captured
    return out
