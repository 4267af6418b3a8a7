"""The fixed positions every benchmark runs on.

Benchmarks must be comparable across devices and runs, so positions are generated
deterministically (a seeded game of legal, non-eye-filling moves under Tromp-Taylor rules) rather
than taken from whatever the device has. Evaluation speed does not depend on the stones, but
feature extraction (ladders, pass-alive areas) and search do, so the set spans the opening, the
middle game and a crowded late middle game.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from agent.backends.base import NNInputs
from agent.game.board import EMPTY, WALL
from agent.game.coords import PASS_LOC, loc_to_gtp
from agent.game.features import encode_v7
from agent.game.position import position_from_query
from agent.game.state import GameState

DEFAULT_MOVE_NUMBERS = (0, 20, 50, 80, 110, 140, 170, 200)


@dataclass(frozen=True)
class BenchPosition:
    """A position in analysis-query form (what search benchmarks send) and its game state."""

    moves: tuple[tuple[str, str], ...]
    board_size: int
    state: GameState

    def query(self, query_id: str, max_visits: int) -> dict[str, object]:
        return {
            "id": query_id,
            "moves": [list(m) for m in self.moves],
            "rules": "tromp-taylor",
            "komi": 7.5,
            "boardXSize": self.board_size,
            "boardYSize": self.board_size,
            "maxVisits": max_visits,
        }


def _fills_own_eye(state: GameState, loc: int) -> bool:
    """True if every on-board neighbour of ``loc`` is the mover's stone (a one-point eye)."""
    board = state.board
    pla = state.pla
    return all(board.color[adj] in (pla, WALL) for adj in board.neighbors(loc))


def _random_game(board_size: int, num_moves: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    state = position_from_query([], rules="tromp-taylor", komi=7.5, board_x=board_size, board_y=board_size)
    moves: list[tuple[str, str]] = []
    for _ in range(num_moves):
        legal = [loc for loc in state.legal_moves(include_pass=False) if state.board.color[loc] == EMPTY]
        candidates = [loc for loc in legal if not _fills_own_eye(state, loc)]
        loc = rng.choice(candidates) if candidates else PASS_LOC
        colour = "B" if state.pla == 1 else "W"
        moves.append((colour, loc_to_gtp(loc, board_size, board_size)))
        state.play(loc)
    return moves


def bench_positions(
    board_size: int = 19, move_numbers: tuple[int, ...] = DEFAULT_MOVE_NUMBERS, seed: int = 2026
) -> list[BenchPosition]:
    """Positions at the given move numbers of one seeded game (same on every device)."""
    game = _random_game(board_size, max(move_numbers), seed)
    out = []
    for n in move_numbers:
        moves = tuple(game[:n])
        state = position_from_query(
            [list(m) for m in moves], rules="tromp-taylor", komi=7.5, board_x=board_size, board_y=board_size
        )
        out.append(BenchPosition(moves, board_size, state))
    return out


def encode_batch(positions: list[BenchPosition], batch_size: int) -> NNInputs:
    """A batch of ``batch_size`` encoded positions, cycling through ``positions``."""
    spatial = np.zeros((batch_size, 22, 19, 19), dtype=np.float32)
    global_ = np.zeros((batch_size, 19), dtype=np.float32)
    for i in range(batch_size):
        s, g = encode_v7(positions[i % len(positions)].state)
        spatial[i], global_[i] = s, g
    return NNInputs(spatial, global_)
