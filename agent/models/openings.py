"""Openings for matches (``verify --games``): short prefixes of real games, or moves sampled from
a network's policy.

Each opening is played twice in a match, once with each network as Black
(:func:`agent.models.strength.play_match`), so an unbalanced opening costs both sides the same.

* :func:`openings_from_sgf`: the first ``k`` moves of records (``k`` drawn per opening between
  two bounds), from games without setup stones that fit the network's buffer;
* :func:`openings_by_policy`: ``k`` moves from an empty board, each drawn from the network's raw
  policy at temperature 1 (legal moves, no pass): varied, plausible, and any board size.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.backends.base import NeuralNet
from agent.errors import AgentError, ConversionError
from agent.game.board import BLACK, Board
from agent.game.rules import Rules
from agent.game.state import GameState
from agent.network.tensors import NNInputs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Opening:
    name: str
    x_size: int
    y_size: int
    moves: tuple[tuple[int, int], ...]  # (loc, colour)


def openings_from_sgf(
    source: Path, count: int, *, board: int, moves: tuple[int, int] = (4, 10), seed: int = 0
) -> list[Opening]:
    """``count`` prefixes of real games (SGF file or folder) that fit a ``board`` buffer, each of
    ``moves[0]..moves[1]`` moves, drawn with a seeded generator (repeats only when the records
    run out of distinct prefixes)."""
    from agent.game.sgf import parse_sgf
    from agent.models.positions import sgf_files

    games = []
    for path in sgf_files(source):
        try:
            game = parse_sgf(path.read_text(encoding="utf-8", errors="replace"))
        except (AgentError, OSError) as exc:
            logger.warning("skipping %s: %s", path, exc)
            continue
        if game.x_size <= board and game.y_size <= board and not game.setup and len(game.moves) >= moves[0]:
            games.append((path.name, game))
    if not games:
        raise ConversionError(f"{source}: no game without setup stones fits a {board}x{board} board")
    candidates = [(name, g, k) for name, g in games for k in range(moves[0], min(moves[1], len(g.moves)) + 1)]
    rng = random.Random(seed)
    rng.shuffle(candidates)
    out = []
    for i in range(count):
        name, g, k = candidates[i % len(candidates)]
        out.append(Opening(f"{name}:{k}", g.x_size, g.y_size, tuple(g.moves[:k])))
    return out


def openings_by_policy(
    net: NeuralNet, count: int, *, size: int, rules: Rules, moves: int = 4, seed: int = 0
) -> list[Opening]:
    """``count`` openings of ``moves`` moves each, sampled from ``net``'s raw policy
    (temperature 1, legal moves, no pass) on an empty ``size`` x ``size`` board."""
    from agent.game.features import encode_v7

    rng = np.random.default_rng(seed)
    nn_x, nn_y = net.info.board_x, net.info.board_y
    out = []
    for i in range(count):
        state = GameState(Board(size, size), BLACK, rules)
        played: list[tuple[int, int]] = []
        for _ in range(moves):
            sp, gl = encode_v7(state, nn_x=nn_x, nn_y=nn_y)
            raw = net.evaluate(NNInputs(sp[None], gl[None]))
            legal = state.legal_moves(include_pass=False)
            geo = state.board.geo
            logits = np.array(
                [raw.policy[0, 0, geo.loc_to_pos(loc, nn_x, nn_y)] for loc in legal], np.float64
            )
            p = np.exp(logits - logits.max())
            loc = legal[int(rng.choice(len(legal), p=p / p.sum()))]
            played.append((loc, state.pla))
            state.play(loc)
        out.append(Opening(f"policy-{seed}-{i}", size, size, tuple(played)))
    return out
