"""``katago-edge verify CONVERTED --reference MODEL --games N``: the strength check by play.

Wires :mod:`agent.models.strength` (openings, games, Elo, SPRT) to two
:class:`agent.search.player.SearchPlayer` (the converted network and the FP32 reference, same
search, same visits), shows progress (games, score, running interval), prints the result, adds
it to the converted file's manifest as ``strength`` and writes every game as SGF.

Exit status: 1 when the SPRT accepts H1 (the converted network loses at least ``-elo1`` Elo),
else 0 (H0 accepted, or undecided after N games: the report says which).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from agent.backends.base import NeuralNet
from agent.errors import ConversionError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("strength check by play (--games)")
    group.add_argument(
        "--games", type=int, default=0, metavar="N", help="play N games against the reference (0: off)"
    )
    group.add_argument("--visits", type=int, default=16, metavar="V", help="search visits per move (16)")
    group.add_argument(
        "--board-size", type=int, metavar="S", help="board of the games (default 9, at most the net's buffer)"
    )
    group.add_argument(
        "--openings",
        type=Path,
        metavar="SGF",
        help="SGF file/folder: openings are prefixes of these games (default: sampled from the "
        "reference's policy)",
    )
    group.add_argument(
        "--opening-moves", type=int, default=4, metavar="K", help="moves of a sampled opening (4)"
    )
    group.add_argument(
        "--games-dir", type=Path, metavar="DIR", help="SGF folder (default: <CONVERTED>.games)"
    )
    group.add_argument(
        "--resign-below",
        type=float,
        default=0.02,
        metavar="P",
        help="resign after 4 own moves below this winrate, opponent agreeing (0: never; default 0.02)",
    )
    group.add_argument("--rules", default="tromp-taylor", help="rules of the games (area scoring)")
    group.add_argument(
        "--no-early-stop", action="store_true", help="play all N games even once the SPRT decided"
    )
    group.add_argument("--seed", type=int, default=1, help="openings and search seed")


def _open_converted(path: Path, threads: int) -> NeuralNet:
    from agent.backends.registry import runtime_for_file

    runtime = runtime_for_file(path)
    if runtime == "onnx":
        from agent.backends.onnx.runtime import OnnxNet

        return OnnxNet(path, intra_op_threads=threads or None)
    if runtime == "tflite":
        from agent.backends.tflite.runtime import TFLiteNet

        return TFLiteNet(path, threads=threads)
    if runtime == "tensorrt":
        from agent.backends.tensorrt.runtime import TensorRTNet

        return TensorRTNet(path)
    raise ConversionError(f"{path}: not a converted network (.onnx, .tflite, .engine)")


def _status(match: Any) -> str:
    est = match.elo()
    return f"+{est.wins}={est.draws}-{est.losses} score {est.score:.3f}, {est.text()}, LLR {match.sprt().llr:.2f}"


def run_match(args: argparse.Namespace, progress: Any) -> int:
    from agent.backends.onnx.builder import OnnxBuildOptions, build_onnx
    from agent.backends.onnx.runtime import OnnxNet
    from agent.game.rules import parse_rules
    from agent.models import strength
    from agent.models.manifest import add_to_manifest
    from agent.models.openings import openings_by_policy, openings_from_sgf
    from agent.network.reader import read_network
    from agent.search.player import SearchPlayer

    if args.games < 2:
        raise ConversionError("--games needs at least 2 (each opening is played with both colours)")
    if not args.converted.is_file():
        raise ConversionError(f"{args.converted}: no such file")
    converted = _open_converted(args.converted, args.threads)
    buffer = min(converted.info.board_x, converted.info.board_y)
    size = args.board_size or min(9, buffer)
    if not 2 <= size <= buffer:
        raise ConversionError(f"--board-size {size}: the converted network's buffer is {buffer}x{buffer}")
    games_dir = args.games_dir or args.converted.with_name(args.converted.name + ".games")
    rules = parse_rules(args.rules)
    network = read_network(args.reference)
    graph = build_onnx(
        network, OnnxBuildOptions(board_x=converted.info.board_x, board_y=converted.info.board_y)
    )
    reference = OnnxNet(graph.SerializeToString(), intra_op_threads=args.threads or None)
    post = network.postprocess
    pairs = (args.games + 1) // 2
    if args.openings is not None:
        openings = openings_from_sgf(args.openings, pairs, board=size, seed=args.seed)
        opening_source = f"sgf:{args.openings}"
    else:
        openings = openings_by_policy(
            reference, pairs, size=size, rules=rules, moves=args.opening_moves, seed=args.seed
        )
        opening_source = f"policy:{args.opening_moves} moves"
    players = (
        SearchPlayer(converted, post, visits=args.visits, seed=2 * args.seed),
        SearchPlayer(reference, post, visits=args.visits, seed=2 * args.seed + 1),
    )
    start = time.monotonic()
    try:
        with progress(f"match {args.converted.name} vs FP32", args.games) as prog:
            match = strength.play_match(
                *players,
                openings,
                args.games,
                rules_name=args.rules,
                sgf_dir=games_dir,
                stop_early=not args.no_early_stop,
                resign_below=args.resign_below,
                names=(args.converted.name, f"{network.name} FP32"),
                on_game=lambda m, _rec: prog(len(m.results), args.games, _status(m)),
            )
    finally:
        for p in players:
            p.close()
    elapsed = time.monotonic() - start
    result = match.to_json()
    result.update(
        {
            "reference": str(args.reference),
            "visits": args.visits,
            "board": size,
            "rules": args.rules,
            "openings": opening_source,
            "resign_below": args.resign_below,
            "games_dir": str(games_dir),
            "seconds": round(elapsed, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    written = add_to_manifest(args.converted, "strength", result)
    est, test = match.elo(), match.sprt()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{est.games} games at {args.visits} visits on {size}x{size} ({args.rules}), "
            f"converted vs FP32 +{est.wins}={est.draws}-{est.losses} (score {est.score:.3f}): "
            f"{est.text()}; {test.text()}"
        )
    print(
        f"games in {games_dir}{os.sep}"
        + ("" if written else f"; no manifest beside {args.converted}, result not recorded"),
        file=sys.stderr,
    )
    return 1 if test.verdict == "H1" else 0
