"""Root symmetry pruning, as KataGo's analysis engine does it (``isSymmetryOf``).

When the root position maps onto itself under some of the 8 board symmetries (an empty board,
a mirrored opening), moves that are images of each other are equivalent. Only one
representative per orbit is searched, with the orbit's policy mass; the others are reported
as copies of the representative's statistics, with the PV mapped through the symmetry and
``isSymmetryOf`` naming the representative.

Symmetry ``s``: bit 0 flips Y, bit 1 flips X, bit 2 transposes (square boards only), the same
bits as the NN input symmetries. Because the analysis engine ignores pre-root history, the
root's features only depend on the stones and the ko point, which is what is checked.
"""

from __future__ import annotations

from agent.game.board import EMPTY
from agent.search.position import SearchState


def map_index(index: int, s: int, x_size: int, y_size: int) -> int:
    """Image of a policy index (``y * x_size + x``; pass maps to itself) under symmetry ``s``."""
    if index == x_size * y_size:
        return index
    y, x = divmod(index, x_size)
    if s & 1:
        y = y_size - 1 - y
    if s & 2:
        x = x_size - 1 - x
    if s & 4:
        x, y = y, x
    return y * x_size + x


def position_symmetries(state: SearchState) -> list[int]:
    """Symmetries (other than identity) under which the root's stones and ko point are unchanged."""
    gs = state.gs
    board = gs.board
    xs, ys = state.x_size, state.y_size
    geo = board.geo
    colors = [board.color[geo.loc(x, y)] for y in range(ys) for x in range(xs)]
    ko = board.ko_loc
    ko_index = None
    if ko not in (0, 1):
        kx, ky = geo.xy(ko)
        ko_index = ky * xs + kx
    out = []
    for s in range(1, 8):
        if s & 4 and xs != ys:
            continue
        ok = True
        for i, c in enumerate(colors):
            if c != EMPTY and colors[map_index(i, s, xs, ys)] != c:
                ok = False
                break
        if ok and ko_index is not None and map_index(ko_index, s, xs, ys) != ko_index:
            ok = False
        if ok:
            out.append(s)
    return out


def orbits(indices: list[int], syms: list[int], x_size: int, y_size: int) -> dict[int, tuple[int, int]]:
    """For moves in ``indices`` (in priority order): ``{copy: (representative, symmetry)}`` where
    ``symmetry`` maps the representative onto the copy."""
    present = set(indices)
    copies: dict[int, tuple[int, int]] = {}
    for rep in indices:
        if rep in copies:
            continue
        for s in syms:
            img = map_index(rep, s, x_size, y_size)
            if img != rep and img in present and img not in copies:
                copies[img] = (rep, s)
    return copies
