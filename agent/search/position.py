"""Positions as the search sees them: a thin layer over ``agent.game.GameState``.

``SearchState`` wraps a ``GameState`` with what the tree needs: policy-index moves
(``y * x_size + x``, pass = ``x_size * y_size``), the legal mask, the NN cache key, the V7
encoding with the analysis-engine root options, and the final score of a finished game. (A
query is replayed into ``GameState`` snapshots by ``agent.protocol.replay``.)

Analysis-engine evaluation options (``../shared/reference/README.md`` §6): with
``ignorePreRootHistory`` the root is encoded with no move history and nodes below it only see
the moves made inside the tree; with ``conservativePass`` the root's history is suppressed when
a pass would end the game, and the root's pass child does not end the game.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.game.area import calculate_area
from agent.game.board import BLACK, WHITE
from agent.game.coords import PASS_LOC
from agent.game.state import GameState
from agent.network.postprocess import RowContext
from agent.search.params import SearchParams

COLOR = {"B": BLACK, "W": WHITE}
COLOR_NAME = {BLACK: "B", WHITE: "W"}


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
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """V7 inputs with the search's evaluation options, and the legal moves (board frame,
        pass last: ``encode_v7``'s ``legal_out``)."""
        from agent.game.features import encode_v7

        pda = params.playout_doubling_advantage
        if (
            pda
            and params.playout_doubling_advantage_pla
            and params.playout_doubling_advantage_pla != COLOR_NAME[self.pla]
        ):
            pda = -pda
        legal = np.empty(self.pass_index + 1, dtype=np.bool_)
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
            legal_out=legal,
        )
        return spatial, global_, legal
