"""Drive KaTrain's own engine driver (``katrain.core.engine.KataGoEngine``) against ``katago-edge``.

Run with a Python that can import ``katrain`` (PyPI ``katrain`` plus ``kivy`` and ``pysgf``;
it imports headless). KaTrain starts ``<katago> analysis -model M -config C -override-config
homeDataDir=...`` exactly as it starts KataGo, sends its queries (analysis with ownership,
policy, ``reportDuringSearchEvery``, ``maxTime``, ``wideRootNoise``, find-alternatives with
``avoidMoves``, a pondering query it terminates) and parses the replies with its own code.

Usage: ``python katrain_session.py KATAGO_CMD MODEL CONFIG OUT.json``; prints and writes a JSON
summary per analysed node, plus every query KaTrain sent (``queries``, as sent on the wire).
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("KIVY_NO_ARGS", "1")
os.environ.setdefault("KIVY_NO_CONSOLELOG", "1")
os.environ.setdefault("KIVY_NO_FILELOG", "1")

from katrain.core.engine import KataGoEngine
from katrain.core.game_node import GameNode
from pysgf import Move

GAME = ["E5", "C4", "G4", "C6", "F7", "D3", "pass"]


class FakeKaTrain:
    """The few things KataGoEngine calls on the KaTrain app object."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, str]] = []
        self.errors: list[str] = []

    def log(self, message: object, level: int = 0) -> None:
        self.messages.append((level, str(message)))

    def update_state(self) -> None:
        pass

    def __call__(self, *args: object) -> None:  # engine_recovery_popup etc.
        self.errors.append(repr(args))


def main() -> int:
    katago, model, config, out = sys.argv[1:5]
    app = FakeKaTrain()
    engine = KataGoEngine(
        app,
        {
            "katago": katago,
            "model": model,
            "config": config,
            "max_visits": 24,
            "fast_visits": 8,
            "max_time": 20.0,
            "wide_root_noise": 0.04,
            "_enable_ownership": True,
            "allow_recovery": False,
        },
    )
    sent: list[dict[str, object]] = []
    original_send = engine.send_query

    def recording_send(query: dict[str, object], *args: object, **kw: object) -> None:
        sent.append(query)  # the writer thread adds the id to this same dict before writing it
        original_send(query, *args, **kw)

    engine.send_query = recording_send  # type: ignore[method-assign]
    root = GameNode(properties={"SZ": "9", "KM": "7", "RU": "chinese"})
    nodes = [root]
    player = "B"
    for gtp in GAME:
        nodes.append(GameNode(parent=nodes[-1], move=Move.from_gtp(gtp, player=player)))
        player = "W" if player == "B" else "B"
    for node in nodes:
        node.analyze(engine, report_every=0.2)
    # find alternatives (avoidMoves) and a pondering query that gets terminated
    deadline = time.time() + 300
    while not nodes[3].analysis_complete and time.time() < deadline:
        time.sleep(0.1)
    nodes[3].analyze(engine, find_alternatives=True)
    nodes[-1].analyze(engine, ponder=True)
    time.sleep(1.0)
    engine.stop_pondering()
    while not engine.is_idle() and time.time() < deadline:
        time.sleep(0.1)
    summary = {
        "nodes": [
            {
                "moves": len(n.nodes_from_root) - 1,
                "complete": n.analysis_complete,
                "root_visits": n.root_visits,
                "candidates": len(n.analysis["moves"]),
                "ownership": len(n.analysis.get("ownership") or []),
                "policy": len(n.analysis.get("policy") or []),
                "score": n.score,
            }
            for n in nodes
        ],
        "errors": app.errors + [m for lvl, m in app.messages if lvl == 1 and "error" in m.lower()],
    }
    summary["queries"] = sent
    engine.shutdown(finish=True)
    text = json.dumps(summary, indent=1)
    print(text)
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
