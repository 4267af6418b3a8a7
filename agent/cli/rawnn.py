"""``katago-edge rawnn``: positions in (JSON lines), raw network outputs out, like ``kata-raw-nn``.

Each stdin line is a position in analysis-query form::

    {"id": "p1", "moves": [["B", "Q16"], ["W", "D4"]], "rules": "japanese", "komi": 6.5,
     "boardXSize": 19, "boardYSize": 19, "initialStones": [], "initialPlayer": "B"}

and each stdout line is KataGo's ``kata-raw-nn`` answer for it as JSON, from **White's**
perspective: ``id``, ``whiteWin``, ``whiteLoss``, ``noResult``, ``whiteLead``,
``whiteScoreSelfplay``, ``whiteScoreSelfplaySq``, ``varTimeLeft``, ``shorttermWinlossError``,
``shorttermScoreError``, ``policy`` (``boardXSize*boardYSize`` values, row-major from the top-left,
``null`` where illegal), ``policyPass``, ``whiteOwnership``. Version-8 nets print -1 for the
outputs they lack. The policy uses KataGo's ``kata-raw-nn`` default optimism 0.2 unless
``--policy-optimism`` says otherwise. A bad line gets ``{"id": ..., "error": "..."}`` and the
command goes on with the next one.

The position is evaluated with full history (like GTP after ``play`` commands) in a 19x19 buffer.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from agent.backends.base import NeuralNet, NNInputs
from agent.errors import AgentError, QueryError
from agent.network.model import Network
from agent.network.postprocess import DEFAULT_RAWNN_POLICY_OPTIMISM, RowContext, postprocess_row

logger = logging.getLogger(__name__)
BUFFER = 19


def configure_rawnn(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="KataGo network (.bin.gz, .bin, .txt.gz)")
    parser.add_argument("--runtime", choices=["numpy", "onnx"], default="numpy", help="network runtime")
    parser.add_argument("--symmetry", type=int, default=0, choices=range(8), metavar="K", help="symmetry 0-7")
    parser.add_argument(
        "--policy-optimism",
        type=float,
        default=DEFAULT_RAWNN_POLICY_OPTIMISM,
        metavar="X",
        help="policy optimism in [0, 1] (KataGo's kata-raw-nn default: 0.2)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, metavar="N", help="CPU threads for the runtime (0 = its default)"
    )
    parser.add_argument(
        "--dump-features", action="store_true", help="add the V7 input features (board region) to each line"
    )


def command_rawnn(args: argparse.Namespace) -> int:
    if not 0.0 <= args.policy_optimism <= 1.0:
        print(f"--policy-optimism must be in [0, 1], got {args.policy_optimism}", file=sys.stderr)
        return 2
    from agent.backends.registry import load_net
    from agent.models.serving import RuntimeEntry, open_network
    from agent.models.store import ModelStore, default_store_root
    from agent.network.reader import read_network

    network = read_network(args.model)
    if args.runtime == "numpy":
        net = load_net(network, runtime="numpy", threads=args.threads or None)
    else:  # the graph the model store built and verified (once; cached after)
        entry = RuntimeEntry(args.runtime, required=True)
        net, _ = open_network(
            Path(args.model), [entry], ModelStore(default_store_root()), threads=args.threads
        )
    logger.info("rawnn: %s (v%d) on %s", network.name, network.version, net.info.runtime)
    run_rawnn(net, network, sys.stdin, sys.stdout, args.symmetry, args.policy_optimism, args.dump_features)
    return 0


def run_rawnn(
    net: NeuralNet,
    network: Network,
    lines: TextIO,
    out: TextIO,
    symmetry: int = 0,
    policy_optimism: float = DEFAULT_RAWNN_POLICY_OPTIMISM,
    dump_features: bool = False,
) -> None:
    """Answer every JSON line of ``lines`` on ``out`` (one line each, flushed)."""
    for line in lines:
        if not line.strip():
            continue
        qid: Any = None
        try:
            try:
                query = json.loads(line)
            except json.JSONDecodeError as exc:
                raise QueryError(f"could not parse JSON: {exc}") from exc
            if not isinstance(query, dict):
                raise QueryError("a query must be a JSON object")
            qid = query.get("id")
            answer = evaluate_query(net, network, query, symmetry, policy_optimism, dump_features)
        except (AgentError, ValueError) as exc:
            answer = {"id": qid, "error": str(exc)}
        out.write(json.dumps(answer) + "\n")
        out.flush()


def evaluate_query(
    net: NeuralNet,
    network: Network,
    query: dict[str, Any],
    symmetry: int = 0,
    policy_optimism: float = DEFAULT_RAWNN_POLICY_OPTIMISM,
    dump_features: bool = False,
) -> dict[str, Any]:
    """One query -> the kata-raw-nn fields (see the module docstring)."""
    from agent.game.board import WHITE
    from agent.game.features import encode_v7, legal_mask
    from agent.game.position import position_from_query

    bx, by = query.get("boardXSize", 19), query.get("boardYSize", 19)
    if not all(isinstance(v, int) and 2 <= v <= BUFFER for v in (bx, by)):
        raise QueryError(f"board size must be 2..{BUFFER}, got {bx}x{by}", field="boardXSize")
    state = position_from_query(
        query.get("moves") or [],
        initial_stones=query.get("initialStones"),
        initial_player=query.get("initialPlayer"),
        rules=query.get("rules", "tromp-taylor"),
        komi=query.get("komi"),
        board_x=bx,
        board_y=by,
    )
    spatial, global_ = encode_v7(
        state,
        symmetry=symmetry,
        nn_x=BUFFER,
        nn_y=BUFFER,
        pass_alive_suicide=network.prefer_pass_alive_under_suicide,
    )
    raw = net.evaluate(NNInputs(spatial[None], global_[None]))
    ctx = RowContext(
        board_x=bx,
        board_y=by,
        white_to_move=state.pla == WHITE,
        legal=legal_mask(state, BUFFER, BUFFER),
        no_result_impossible=state.rules.ko != "SIMPLE" and state.rules.is_area,
        symmetry=symmetry,
    )
    answer = postprocess_row(raw, 0, network.postprocess, ctx, policy_optimism=policy_optimism).to_rawnn(
        query.get("id")
    )
    if dump_features:
        canonical, _ = encode_v7(state, nn_x=BUFFER, nn_y=BUFFER)
        answer["features"] = {
            "spatial": np.rint(canonical[:, :by, :bx]).astype(int).tolist(),
            "global": [float(v) for v in global_],
        }
    return answer
