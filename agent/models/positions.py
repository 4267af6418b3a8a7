"""Position sets for INT8 calibration and conversion verification.

Two sources, both giving encoded V7 inputs (``spatial [N,22,H,W]``, ``global [N,19]``) plus a
stable id per position so that calibration and verification sets can be kept disjoint:

* **SGF records** (a file or a folder, searched recursively for ``*.sgf``): every position of
  every main line is a candidate (the position *after* ``k`` moves, ``k = 0..len``); a seeded
  sample is drawn, and positions whose id is in ``exclude`` are skipped. Ids are
  ``<file name>#<k>``. Games that cannot be replayed (bad SGF, illegal move, board larger than
  the buffer) are skipped with a warning; a source with no usable game is a ``ConversionError``.
* **self-play** with the FP32 network, for users without records: a few games played in
  parallel, each move sampled from the network's policy (temperature 1, legal moves only), a
  random quarter of the positions kept. Ids are ``selfplay-<seed>-<game>#<k>``.

Features are encoded like the analysis engine's root (full history kept, symmetry 0).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from agent.backends.base import NeuralNet
from agent.errors import AgentError, ConversionError
from agent.network.tensors import F32, NNInputs, PositionSet

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)


def sgf_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.suffix.lower() == ".sgf" and p.is_file())
    raise ConversionError(f"{source}: no such SGF file or folder")


def positions_from_sgf(
    source: Path,
    count: int,
    *,
    nn_x: int = 19,
    nn_y: int = 19,
    seed: int = 0,
    exclude: Iterable[str] = (),
    progress: Progress | None = None,
) -> PositionSet:
    """Sample up to ``count`` positions from the SGF records under ``source`` (module docstring)."""
    from agent.game.features import encode_v7
    from agent.game.sgf import parse_sgf, sgf_rules, state_from_sgf

    files = sgf_files(source)
    excluded = set(exclude)
    games = []
    for path in files:
        try:
            game = parse_sgf(path.read_text(encoding="utf-8", errors="replace"))
            sgf_rules(game)
        except (AgentError, OSError, ValueError) as exc:
            logger.warning("skipping %s: %s", path, exc)
            continue
        if game.x_size > nn_x or game.y_size > nn_y:
            logger.warning(
                "skipping %s: %dx%d board does not fit the %dx%d buffer",
                path,
                game.x_size,
                game.y_size,
                nn_x,
                nn_y,
            )
            continue
        games.append((path, game))
    candidates = [(gi, k) for gi, (path, game) in enumerate(games) for k in range(len(game.moves) + 1)]
    candidates = [(gi, k) for gi, k in candidates if f"{games[gi][0].name}#{k}" not in excluded]
    if not candidates:
        raise ConversionError(
            f"{source}: no usable games ({len(files)} SGF files, {len(games)} readable, "
            "none with positions left)"
        )
    rng = random.Random(seed)
    chosen = sorted(rng.sample(candidates, min(count, len(candidates))))
    wanted: dict[int, set[int]] = {}
    for gi, k in chosen:
        wanted.setdefault(gi, set()).add(k)
    spatial, glob, ids = [], [], []
    for gi, ks in wanted.items():
        path, game = games[gi]
        try:
            state = state_from_sgf(game, 0)
            for k in range(max(ks) + 1):
                if k in ks:
                    sp, gl = encode_v7(state, nn_x=nn_x, nn_y=nn_y)
                    spatial.append(sp)
                    glob.append(gl)
                    ids.append(f"{path.name}#{k}")
                    if progress:
                        progress(len(ids), len(chosen))
                if k < len(game.moves):
                    loc, pla = game.moves[k]
                    state.play_move(loc, pla, move_index=k)
        except AgentError as exc:
            logger.warning("%s: stopped replaying at move %d: %s", path, k, exc)
    if not ids:
        raise ConversionError(f"{source}: no usable games (no position could be replayed)")
    return PositionSet(np.stack(spatial), np.stack(glob), tuple(ids), f"sgf:{source}")


def positions_from_selfplay(
    net: NeuralNet,
    count: int,
    *,
    board_sizes: Sequence[int] = (19, 19, 19, 13, 9),
    games: int = 8,
    seed: int = 0,
    rules: str = "tromp-taylor",
    max_moves: int = 250,
    keep: float = 0.25,
    progress: Progress | None = None,
) -> PositionSet:
    """Play ``games`` games in parallel with ``net`` (policy sampling) until ``count`` positions exist.

    Each position is kept with probability ``keep`` so that the set spreads over whole games
    instead of piling up in the openings.
    """
    from agent.game.board import BLACK, Board
    from agent.game.coords import PASS_LOC
    from agent.game.features import encode_v7
    from agent.game.rules import parse_rules
    from agent.game.state import GameState

    info = net.info
    nn_x, nn_y = info.board_x, info.board_y
    rng = np.random.default_rng(seed)
    rule_obj = parse_rules(rules)
    spatial: list[F32] = []
    glob: list[F32] = []
    ids: list[str] = []
    game_no = 0

    def new_game() -> tuple[int, GameState, int]:
        nonlocal game_no
        game_no += 1
        size = int(rng.choice([s for s in board_sizes if s <= min(nn_x, nn_y)] or [min(nn_x, nn_y)]))
        return game_no, GameState(Board(size, size), BLACK, rule_obj), 0

    live = [new_game() for _ in range(games)]
    while len(ids) < count:
        feats = [encode_v7(state, nn_x=nn_x, nn_y=nn_y) for _, state, _ in live]
        batch = NNInputs(np.stack([f[0] for f in feats]), np.stack([f[1] for f in feats]))
        out = net.evaluate(batch)
        for i, (gno, state, k) in enumerate(live):
            if len(ids) < count and rng.random() < keep:
                spatial.append(feats[i][0])
                glob.append(feats[i][1])
                ids.append(f"selfplay-{seed}-{gno}#{k}")
                if progress:
                    progress(len(ids), count)
            legal = state.legal_moves(include_pass=True)
            geo = state.board.geo
            logits = np.array(
                [
                    out.policy_pass[i, 0]
                    if loc == PASS_LOC
                    else out.policy[i, 0, geo.loc_to_pos(loc, nn_x, nn_y)]
                    for loc in legal
                ],
                np.float64,
            )
            p = np.exp(logits - logits.max())
            move = legal[int(rng.choice(len(legal), p=p / p.sum()))]
            state.play(move)
            if state.is_over or k + 1 >= max_moves:
                live[i] = new_game()
            else:
                live[i] = (gno, state, k + 1)
    return PositionSet(np.stack(spatial), np.stack(glob), tuple(ids), f"selfplay:{info.name}:seed{seed}")


def split_disjoint(positions: PositionSet, first: int) -> tuple[PositionSet, PositionSet]:
    """The first ``first`` positions and the rest (for calibration / verification from one source)."""
    a = PositionSet(
        positions.spatial[:first], positions.global_[:first], positions.ids[:first], positions.source
    )
    b = PositionSet(
        positions.spatial[first:], positions.global_[first:], positions.ids[first:], positions.source
    )
    return a, b
