"""KataGo's root "ending score bonus": small penalties that keep the end of the game tidy.

At the root only, each move gets a few points (White's view) added to its score before its
utility is compared, using the root network's ownership (``rootEndingBonusPoints`` = 0.5):

* area scoring, no ko on the board: a move on a point the mover almost surely does not own
  (ownership <= -0.95) is penalised unless it captures; a move inside the mover's own sure
  area (>= 0.95) is penalised unless it touches an opponent stone or connects own groups that
  are not pass-alive. With a button, passing costs a quarter point;
* territory scoring: passing costs a third of a point (so dame get filled first) and the same
  two kinds of pointless moves are penalised (without the capture exception).

The penalty grows linearly from 0 at |ownership| = 0.95 to the full amount at 1.
"""

from __future__ import annotations

import numpy as np

from agent.game.area import calculate_area
from agent.game.board import WHITE, Board
from agent.game.coords import NULL_LOC
from agent.search.position import SearchState

EXTREME = 0.95
TAIL = 0.05


def _would_capture(b: Board, loc: int, pla: int) -> bool:
    opp = 3 - pla
    return any(b.color[n] == opp and len(b.libs[b.cid[n]]) == 1 for n in b.neighbors(loc))


def _adjacent_to(b: Board, loc: int, color: int) -> bool:
    return any(b.color[n] == color for n in b.neighbors(loc))


def _non_pass_alive_self_connection(b: Board, loc: int, pla: int, safe: list[int]) -> bool:
    """The move joins two or more own chains that are not already pass-alive."""
    heads = {b.cid[n] for n in b.neighbors(loc) if b.color[n] == pla and safe[n] != pla}
    return len(heads) >= 2


def ending_white_bonus(
    state: SearchState, moves: np.ndarray, white_ownership: np.ndarray, points: float
) -> np.ndarray:
    """White-perspective score bonus for each root move (policy indices; pass = x*y)."""
    out = np.zeros(len(moves))
    if points == 0:
        return out
    gs = state.gs
    board = gs.board
    pla = gs.pla
    area_ish = gs.rules.scoring == "AREA"
    pass_index = state.pass_index
    safe: list[int] | None = None
    sign = 1.0 if pla == WHITE else -1.0
    for k, m in enumerate(moves):
        m = int(m)
        extra = 0.0
        if m == pass_index:
            if area_ish and gs.has_button:
                extra -= points * 0.5
            elif not area_ish:
                extra -= points * (2.0 / 3.0)
        elif board.ko_loc == NULL_LOC:
            own = sign * float(white_ownership[m])
            loc = state.loc_of(m)
            if own <= -EXTREME:
                if not (area_ish and _would_capture(board, loc, pla)):
                    extra -= points * ((-EXTREME - own) / TAIL)
            elif own >= EXTREME and not _adjacent_to(board, loc, 3 - pla):
                if safe is None:
                    safe = calculate_area(board, False, True, False, gs.rules.suicide)
                if not _non_pass_alive_self_connection(board, loc, pla, safe):
                    extra -= points * ((own - EXTREME) / TAIL)
        out[k] = extra if pla == WHITE else -extra
    return out
