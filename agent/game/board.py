"""The Go board: stones, chains with incremental liberties, captures, simple ko, Zobrist hash.

Layout follows KataGo (see ``coords``): a padded 1-D array with off-board ``WALL`` sentinels.
Chains are kept incrementally: ``cid[loc]`` is the chain's head, ``stones[head]`` its stones and
``libs[head]`` its liberty set. The containers are **copy-on-write**: ``play`` never mutates a
list or set it did not create during the same move, so ``copy()`` is a few shallow copies and
several boards (history snapshots, search nodes) can share chain data safely. ``play`` returns an
undo record and ``undo`` restores the board exactly; the ladder search uses that pair.

A move at ``p`` (KataGo's ``playMoveAssumeLegal``): place the stone, merge friendly chains,
remove opponent chains left without liberties, then remove the mover's own chain if it has none
(multi-stone suicide, only reachable when the rules allow it). ``ko_loc`` is set when exactly one
stone was captured by a single stone that is left with exactly one liberty.
"""

from __future__ import annotations

import random
from array import array
from dataclasses import dataclass
from functools import lru_cache

from agent.game.coords import NULL_LOC, PASS_LOC, Geometry

EMPTY, BLACK, WHITE, WALL = 0, 1, 2, 3
COLOR_CHARS = {EMPTY: ".", BLACK: "X", WHITE: "O"}
_MASK64 = (1 << 64) - 1


def opp(c: int) -> int:
    return 3 - c


@lru_cache(maxsize=64)
def zobrist_table(x_size: int, y_size: int) -> tuple[tuple[int, ...], int]:
    """Deterministic 64-bit keys: ``table[loc * 3 + color]`` and a per-size base hash."""
    g = Geometry(x_size, y_size)
    rng = random.Random(0x6B617461 ^ (x_size << 8) ^ y_size)
    table = tuple(rng.getrandbits(64) for _ in range(g.arr_size * 3))
    return table, rng.getrandbits(64)


@dataclass
class Undo:
    """What ``Board.play`` changed, for ``Board.undo``."""

    loc: int
    head: int
    saved: dict[int, tuple[list[int], set[int], int, bool]]
    ko_loc: int
    hash: int
    captured_black: int
    captured_white: int


class Board:
    __slots__ = (
        "cache",
        "captured",
        "cid",
        "color",
        "geo",
        "hash",
        "ko_loc",
        "libs",
        "stones",
        "stride",
        "x_size",
        "y_size",
        "zob",
    )

    def __init__(self, x_size: int, y_size: int) -> None:
        self.geo = Geometry(x_size, y_size)
        self.x_size = x_size
        self.y_size = y_size
        self.stride = x_size + 1
        # compact per-point arrays (one byte per colour, two per chain id): search trees keep a
        # board per node, so a list of Python ints (8 bytes a point, twice) would dominate
        self.color = bytearray([WALL]) * self.geo.arr_size
        for loc in self.geo.all_locs():
            self.color[loc] = EMPTY
        self.cid = array("H", bytes(2 * self.geo.arr_size))
        self.stones: dict[int, list[int]] = {}
        self.libs: dict[int, set[int]] = {}
        self.ko_loc = NULL_LOC
        self.zob, self.hash = zobrist_table(x_size, y_size)
        self.captured = [0, 0, 0]  # stones of each colour captured so far (index BLACK / WHITE)
        self.cache: dict[str, object] | None = None  # derived data (ladders, areas) of a frozen board

    # ------------------------------------------------------------------ basics
    def copy(self) -> Board:
        b = Board.__new__(Board)
        b.geo = self.geo
        b.x_size = self.x_size
        b.y_size = self.y_size
        b.stride = self.stride
        b.color = self.color[:]
        b.cid = self.cid[:]
        b.stones = self.stones.copy()
        b.libs = self.libs.copy()
        b.ko_loc = self.ko_loc
        b.zob = self.zob
        b.hash = self.hash
        b.captured = self.captured[:]
        b.cache = None
        return b

    def neighbors(self, loc: int) -> tuple[int, int, int, int]:
        """Up, left, right, down (KataGo's order)."""
        s = self.stride
        return (loc - s, loc - 1, loc + 1, loc + s)

    def num_liberties(self, loc: int) -> int:
        return len(self.libs[self.cid[loc]])

    def chain_stones(self, loc: int) -> list[int]:
        return self.stones[self.cid[loc]]

    def chain_libs(self, loc: int) -> set[int]:
        return self.libs[self.cid[loc]]

    def stone_hash(self) -> int:
        """Hash of the stones only (positional superko)."""
        return self.hash

    # ---------------------------------------------------------------- legality
    def is_suicide(self, loc: int, pla: int) -> bool:
        """Would a ``pla`` stone at empty ``loc`` be captured at once (rules ignored)?"""
        return self.is_illegal_suicide(loc, pla, False)

    def is_illegal_suicide(self, loc: int, pla: int, suicide_legal: bool) -> bool:
        """Is ``loc`` suicide for ``pla``, and illegal as such (``suicide_legal`` allows a
        multi-stone suicide, never a single stone's)?"""
        color = self.color
        cid = self.cid
        libs = self.libs
        for n in (loc - self.stride, loc - 1, loc + 1, loc + self.stride):
            c = color[n]
            if c == EMPTY:
                return False
            if c == pla:
                if suicide_legal or len(libs[cid[n]]) > 1:
                    return False
            elif c != WALL and len(libs[cid[n]]) == 1:
                return False
        return True

    def is_legal(self, loc: int, pla: int, suicide_legal: bool) -> bool:
        """Board-level legality: pass, or an empty non-ko point that is not illegal suicide."""
        if loc == PASS_LOC:
            return True
        if loc == self.ko_loc or self.color[loc] != EMPTY:
            return False
        return not self.is_illegal_suicide(loc, pla, suicide_legal)

    def hash_after_move(self, loc: int, pla: int) -> int:
        """Stone hash of the position after ``pla`` plays the (legal) move ``loc``."""
        zob = self.zob
        h = self.hash ^ zob[loc * 3 + pla]
        color = self.color
        cid = self.cid
        libs = self.libs
        o = 3 - pla
        seen: list[int] = []
        captures = False
        own_libs: set[int] = set()
        own_heads: list[int] = []
        for n in (loc - self.stride, loc - 1, loc + 1, loc + self.stride):
            c = color[n]
            if c == o:
                hd = cid[n]
                if hd not in seen and len(libs[hd]) == 1:
                    seen.append(hd)
                    captures = True
                    for s in self.stones[hd]:
                        h ^= zob[s * 3 + o]
            elif c == EMPTY:
                own_libs.add(n)
            elif c == pla:
                hd = cid[n]
                if hd not in own_heads:
                    own_heads.append(hd)
                    own_libs |= libs[hd]
        if not captures:
            own_libs.discard(loc)
            if not own_libs:  # (multi-stone) suicide: own chain disappears
                h ^= zob[loc * 3 + pla]
                for hd in own_heads:
                    for s in self.stones[hd]:
                        h ^= zob[s * 3 + pla]
        return h

    # ------------------------------------------------------------------- moves
    def play(self, loc: int, pla: int) -> Undo:
        """Play a move assumed legal; returns the undo record."""
        self.cache = None
        undo = Undo(loc, 0, {}, self.ko_loc, self.hash, self.captured[BLACK], self.captured[WHITE])
        if loc == PASS_LOC:
            self.ko_loc = NULL_LOC
            return undo
        color = self.color
        cid = self.cid
        stones = self.stones
        libs = self.libs
        zob = self.zob
        saved = undo.saved
        stride = self.stride
        o = 3 - pla
        color[loc] = pla
        h = self.hash ^ zob[loc * 3 + pla]
        my_libs: set[int] = set()
        friends: list[int] = []
        foes: list[int] = []
        for n in (loc - stride, loc - 1, loc + 1, loc + stride):
            c = color[n]
            if c == EMPTY:
                my_libs.add(n)
            elif c == pla:
                hd = cid[n]
                if hd not in friends:
                    friends.append(hd)
            elif c == o:
                hd = cid[n]
                if hd not in foes:
                    foes.append(hd)
        fresh: set[int] = set()
        dead: list[int] = []
        for hd in foes:
            old = libs[hd]
            saved[hd] = (stones[hd], old, o, False)
            nl = old - {loc}
            libs[hd] = nl
            fresh.add(hd)
            if not nl:
                dead.append(hd)
        if friends:
            big = friends[0]
            for hd in friends:
                saved[hd] = (stones[hd], libs[hd], pla, True)
                if len(stones[hd]) > len(stones[big]):
                    big = hd
            ns = [*stones[big], loc]
            nl = set(libs[big])
            for hd in friends:
                if hd != big:
                    st = stones[hd]
                    ns += st
                    nl |= libs[hd]
                    for s in st:
                        cid[s] = big
                    del stones[hd]
                    del libs[hd]
            nl |= my_libs
            nl.discard(loc)
            head = big
        else:
            head = loc
            ns = [loc]
            nl = my_libs
        cid[loc] = head
        stones[head] = ns
        libs[head] = nl
        fresh.add(head)
        undo.head = head
        ncap = 0
        cap_loc = NULL_LOC
        for hd in dead:
            st, lb, c, _ = saved[hd]
            saved[hd] = (st, lb, c, True)
            h = self._lift(st, o, saved, fresh, h)
            del stones[hd]
            del libs[hd]
            ncap += len(st)
            cap_loc = st[0]
        self.captured[o] += ncap
        if not nl:  # suicide (legal only as multi-stone suicide)
            st = stones.pop(head)
            del libs[head]
            h = self._lift(st, pla, saved, fresh, h)
            self.captured[pla] += len(st)
            self.ko_loc = NULL_LOC
        elif ncap == 1 and len(ns) == 1 and len(nl) == 1:
            self.ko_loc = cap_loc
        else:
            self.ko_loc = NULL_LOC
        self.hash = h
        return undo

    def _lift(
        self,
        st: list[int],
        removed: int,
        saved: dict[int, tuple[list[int], set[int], int, bool]],
        fresh: set[int],
        h: int,
    ) -> int:
        """Take the stones ``st`` (of colour ``removed``) off the board in :meth:`play`: each becomes
        a liberty of the adjacent chains of the other colour, whose liberty sets are copied once a
        move (``fresh``) and kept in ``saved`` for the undo. Returns the hash ``h`` without them."""
        color = self.color
        cid = self.cid
        libs = self.libs
        zob = self.zob
        stride = self.stride
        other = 3 - removed
        for s in st:
            color[s] = EMPTY
            h ^= zob[s * 3 + removed]
            for n in (s - stride, s - 1, s + 1, s + stride):
                if color[n] == other:
                    hh = cid[n]
                    if hh not in fresh:
                        if hh not in saved:
                            saved[hh] = (self.stones[hh], libs[hh], other, False)
                        libs[hh] = set(libs[hh])
                        fresh.add(hh)
                    libs[hh].add(s)
        return h

    def undo(self, u: Undo) -> None:
        self.cache = None
        self.ko_loc = u.ko_loc
        self.hash = u.hash
        self.captured[BLACK] = u.captured_black
        self.captured[WHITE] = u.captured_white
        if u.loc == PASS_LOC:
            return
        color = self.color
        cid = self.cid
        stones = self.stones
        libs = self.libs
        color[u.loc] = EMPTY
        stones.pop(u.head, None)
        libs.pop(u.head, None)
        for hd, (st, lb, c, restore) in u.saved.items():
            stones[hd] = st
            libs[hd] = lb
            if restore:
                for s in st:
                    color[s] = c
                    cid[s] = hd

    def set_stone(self, loc: int, c: int) -> None:
        """Setup placement (``AB``/``AW``/``AE``, ``initialStones``); rebuilds all chains.

        Slow (whole-board rebuild) but only used while setting a position up. Does not capture.
        """
        self.color[loc] = c
        self.rebuild()

    def rebuild(self) -> None:
        """Recompute chains, liberties and hash from ``color`` alone."""
        self.cache = None
        table, base = zobrist_table(self.x_size, self.y_size)
        self.hash = base
        self.stones = {}
        self.libs = {}
        color = self.color
        for loc in self.geo.all_locs():
            c = color[loc]
            if c == EMPTY:
                continue
            self.hash ^= table[loc * 3 + c]
        seen: set[int] = set()
        for loc in self.geo.all_locs():
            c = color[loc]
            if c == EMPTY or loc in seen:
                continue
            chain = [loc]
            seen.add(loc)
            lib: set[int] = set()
            i = 0
            while i < len(chain):
                p = chain[i]
                i += 1
                for n in self.neighbors(p):
                    cn = color[n]
                    if cn == EMPTY:
                        lib.add(n)
                    elif cn == c and n not in seen:
                        seen.add(n)
                        chain.append(n)
            for p in chain:
                self.cid[p] = loc
            self.stones[loc] = chain
            self.libs[loc] = lib

    # ------------------------------------------------------------------- views
    def to_rows(self) -> list[str]:
        """Rows top to bottom, ``X`` black, ``O`` white, ``.`` empty (the reference format)."""
        g = self.geo
        return [
            "".join(COLOR_CHARS[self.color[g.loc(x, y)]] for x in range(self.x_size))
            for y in range(self.y_size)
        ]

    def __str__(self) -> str:
        return "\n".join(self.to_rows())

    @classmethod
    def from_rows(cls, rows: list[str]) -> Board:
        """Build from ASCII rows (``X``/``B`` black, ``O``/``W`` white, anything else empty)."""
        rows = [r.replace(" ", "") for r in rows if r.strip()]
        b = cls(len(rows[0]), len(rows))
        for y, row in enumerate(rows):
            for x, ch in enumerate(row):
                if ch in "XxBb#":
                    b.color[b.geo.loc(x, y)] = BLACK
                elif ch in "OoWw":
                    b.color[b.geo.loc(x, y)] = WHITE
        b.rebuild()
        return b
