"""Positions as the search sees them: a thin layer over ``agent.game.GameState``.

* ``build_turns(request)`` replays a validated query like ``katago analysis`` does: initial
  stones, the initial player (first mover, else White when Black has handicap stones), a move by
  the player not to move clears the history, moves only need to be *tolerantly* legal (empty
  point, not single-stone suicide); a failure is ``Illegal move N: LOC`` on field ``moves``.
  It returns one ``GameState`` snapshot per analysed turn plus rules warnings.
* ``SearchState`` wraps a ``GameState`` with what the tree needs: policy-index moves
  (``y * x_size + x``, pass = ``x_size * y_size``), the legal mask, the NN cache key, the V7
  encoding with the analysis-engine root options, and the final score of a finished game.

Analysis-engine evaluation options (``../shared/reference/README.md`` §6): with
``ignorePreRootHistory`` the root is encoded with no move history and nodes below it only see
the moves made inside the tree; with ``conservativePass`` the root's history is suppressed when
a pass would end the game, and the root's pass child does not end the game.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from agent.errors import IllegalMoveError, QueryError
from agent.game.area import calculate_area
from agent.game.board import BLACK, WHITE, Board
from agent.game.coords import PASS_LOC
from agent.game.rules import supported_rules
from agent.game.state import GameState
from agent.network.postprocess import RowContext
from agent.search.params import SearchParams

if TYPE_CHECKING:
    from agent.protocol.query import AnalysisRequest

COLOR = {"B": BLACK, "W": WHITE}
COLOR_NAME = {BLACK: "B", WHITE: "W"}


def _num_handicap_on_board(board: Board) -> int:
    nb = sum(1 for loc in board.geo.all_locs() if board.color[loc] == BLACK)
    nw = sum(1 for loc in board.geo.all_locs() if board.color[loc] == WHITE)
    return 0 if nw or nb <= 1 else nb


def build_turns(request: AnalysisRequest) -> tuple[list[tuple[int, GameState]], list[tuple[str, str]]]:
    """Replay the query; ``[(turn, state)]`` for the analysed turns, and rules warnings."""
    rules, msgs = supported_rules(request.rules)
    warnings = [("rules", m) for m in msgs]
    board = Board(request.x_size, request.y_size)
    geo = board.geo
    for color, stone in request.initial_stones:
        if stone is not None:
            board.color[geo.loc(*stone)] = COLOR[color]
    board.rebuild()
    if request.initial_player is not None:
        pla = COLOR[request.initial_player]
    elif request.moves:
        pla = COLOR[request.moves[0][0]]
    else:
        pla = WHITE if _num_handicap_on_board(board) > 0 else BLACK
    state = GameState(board, pla, rules)
    wanted = set(request.analyze_turns)
    out: list[tuple[int, GameState]] = []
    for turn in range(len(request.moves) + 1):
        if turn in wanted:
            out.append((turn, state.copy()))
        if turn >= len(request.moves):
            break
        color, xy = request.moves[turn]
        loc = PASS_LOC if xy is None else geo.loc(*xy)
        try:
            state.play_move(loc, COLOR[color], move_index=turn)
        except IllegalMoveError as exc:
            raise QueryError(f"Illegal move {turn}: {geo.to_gtp(loc)}", "moves") from exc
    return out, warnings


class SearchState:
    """One tree position. ``depth`` counts moves below the search root."""

    __slots__ = ("depth", "gs", "x_size", "y_size")

    def __init__(self, gs: GameState, depth: int = 0) -> None:
        self.gs = gs
        self.depth = depth
        self.x_size = gs.board.x_size
        self.y_size = gs.board.y_size

    @property
    def pla(self) -> int:
        return self.gs.pla

    @property
    def white_to_move(self) -> bool:
        return self.gs.pla == WHITE

    @property
    def pass_index(self) -> int:
        return self.x_size * self.y_size

    def loc_of(self, index: int) -> int:
        if index == self.pass_index:
            return PASS_LOC
        y, x = divmod(index, self.x_size)
        return self.gs.board.geo.loc(x, y)

    def index_of_xy(self, xy: tuple[int, int] | None) -> int:
        return self.pass_index if xy is None else xy[1] * self.x_size + xy[0]

    def gtp(self, index: int) -> str:
        return self.gs.board.geo.to_gtp(self.loc_of(index))

    def legal_mask(self) -> np.ndarray:
        mask = np.zeros(self.pass_index + 1, dtype=bool)
        stride = self.x_size + 1
        for loc in self.gs.legal_moves(include_pass=False):
            x, y = loc % stride - 1, loc // stride - 1
            mask[y * self.x_size + x] = True
        mask[-1] = True
        return mask

    def play(self, index: int) -> SearchState:
        gs = self.gs.copy()
        gs.play(self.loc_of(index))
        return SearchState(gs, self.depth + 1)

    def is_terminal(self, root_conservative_pass_child: bool) -> bool:
        """The game ended here (two passes under area scoring, or past the normal end under
        territory scoring), unless this is the root's pass child under conservative pass."""
        return self.gs.is_over and not root_conservative_pass_child

    def final_white_score(self) -> float:
        """White minus Black: area (stones + single-colour empty regions) plus komi and bonuses."""
        board = self.gs.board
        area = calculate_area(board, True, True, True, self.gs.rules.suicide)
        diff = 0
        for loc in board.geo.all_locs():
            c = area[loc]
            if c == WHITE:
                diff += 1
            elif c == BLACK:
                diff -= 1
        return diff + self.gs.self_komi(WHITE)

    def _max_history(self, params: SearchParams) -> int:
        return self.depth if params.ignore_pre_root_history else 1000

    def _conservative(self, params: SearchParams) -> bool:
        return self.depth == 0 and params.conservative_pass

    def nn_key(self, params: SearchParams) -> Any:
        mh = self._max_history(params)
        return (
            self.gs.nn_hash(conservative_pass=self._conservative(params), max_history=mh),
            mh,
            params.playout_doubling_advantage,
            self.x_size,
            self.y_size,
        )

    def row_context(self, legal: np.ndarray, buffer: int = 19) -> RowContext:
        rules = self.gs.rules
        return RowContext(
            board_x=self.x_size,
            board_y=self.y_size,
            white_to_move=self.white_to_move,
            legal=legal,
            no_result_impossible=rules.ko != "SIMPLE" and rules.scoring != "TERRITORY",
            buffer_x=buffer,
            buffer_y=buffer,
        )

    def encode(
        self, params: SearchParams, buffer: int = 19, pass_alive_suicide: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        from agent.game.features import encode_v7

        pda = params.playout_doubling_advantage
        if (
            pda
            and params.playout_doubling_advantage_pla
            and params.playout_doubling_advantage_pla != COLOR_NAME[self.pla]
        ):
            pda = -pda
        spatial, global_ = encode_v7(
            self.gs,
            nn_x=buffer,
            nn_y=buffer,
            max_history=self._max_history(params),
            conservative_pass=self._conservative(params),
            enable_passing_hacks=params.enable_passing_hacks,
            playout_doubling_advantage=pda,
            draw_equivalent_wins_for_white=params.draw_equivalent_wins_for_white,
            pass_alive_suicide=pass_alive_suicide,
        )
        return spatial, global_
