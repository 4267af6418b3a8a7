"""Benchmark (not a test): what the agent adds per query in front of a KataGo child.

Runs the same queries (N distinct 9x9 positions, ``maxVisits: 1``) twice: straight into a
``katago analysis`` child over its pipes, and through ``AnalysisService`` + ``KataGoEngine``
(validation, move replay, id relabelling, JSON decode/route/emit). Each side gets a fresh child
with the same generated config and ``nnRandomize = false``; a first pass fills KataGo's NN cache
so that the measured pass times the plumbing, not the network. Sequential: one query at a time,
wall time from sending to its final response. Burst: all N at once, wall time to the last one.

    .venv/bin/python tests/engines/katago/bench_overhead.py [N] [big]
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.engines.katago_binary import KataGoSettings, find_katago
from agent.engines.katago_config import prepare_config
from agent.engines.katago_process import KataGoEngine
from agent.protocol.service import AnalysisService

MODEL = Path("/work/shared/models/g170-b6c96-s175395328-d26788732.bin.gz")
COLS = "ABCDEFGHJ"


def queries(n: int, big: bool = False) -> list[dict[str, Any]]:
    """``big``: the same moves on 19x19 with ownership and policy (responses of ~25 KB)."""
    points = [c + str(r) for c in COLS for r in range(1, 10)]
    out = []
    for i in range(n):
        moves = [["B", points[i % 81]]] + ([["W", points[(i * 7 + 40) % 81]]] if i >= 81 else [])
        if len(moves) == 2 and moves[0][1] == moves[1][1]:
            moves.pop()
        out.append(
            {
                "id": f"b{i}",
                "moves": moves,
                "rules": "tromp-taylor",
                "komi": 7.5,
                "boardXSize": 19 if big else 9,
                "boardYSize": 19 if big else 9,
                "maxVisits": 1,
                **({"includeOwnership": True, "includePolicy": True} if big else {}),
            }
        )
    return out


class Waiter:
    def __init__(self) -> None:
        self.done: dict[str, float] = {}
        self.cond = threading.Condition()

    def final(self, resp: dict[str, Any]) -> None:
        if resp.get("isDuringSearch") is False or "error" in resp:
            with self.cond:
                self.done[str(resp.get("id"))] = time.perf_counter()
                self.cond.notify_all()

    def wait(self, ids: list[str], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(i in self.done for i in ids):
                if not self.cond.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(ids[:3])


def run_side(
    send: Callable[[dict[str, Any]], None], waiter: Waiter, qs: list[dict[str, Any]]
) -> dict[str, float]:
    for q in qs:  # warm-up pass: fills the NN cache
        send(q)
    waiter.wait([q["id"] for q in qs])
    lat = []
    for q in qs:
        q2 = dict(q, id=q["id"] + "s")
        t0 = time.perf_counter()
        send(q2)
        waiter.wait([q2["id"]])
        lat.append(waiter.done[q2["id"]] - t0)
    burst = [dict(q, id=q["id"] + "b") for q in qs]
    t0 = time.perf_counter()
    for q in burst:
        send(q)
    waiter.wait([q["id"] for q in burst])
    total = time.perf_counter() - t0
    return {
        "seq_median_ms": 1000 * statistics.median(lat),
        "seq_mean_ms": 1000 * statistics.fmean(lat),
        "burst_per_query_ms": 1000 * total / len(qs),
    }


def direct(binary: Any, cfg: Path, qs: list[dict[str, Any]]) -> dict[str, float]:
    cmd = [str(binary.path), "analysis", "-model", str(MODEL), "-config", str(cfg), "-quit-without-waiting"]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=binary.environ()
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout
    waiter = Waiter()

    def read() -> None:
        for line in stdout:
            waiter.final(json.loads(line))

    threading.Thread(target=read, daemon=True).start()

    def send(q: dict[str, Any]) -> None:
        stdin.write((json.dumps(q) + "\n").encode())
        stdin.flush()

    try:
        return run_side(send, waiter, qs)
    finally:
        stdin.close()
        proc.wait(timeout=30)


def agent(binary: Any, settings: KataGoSettings, qs: list[dict[str, Any]]) -> dict[str, float]:
    engine = KataGoEngine(binary, MODEL, settings).start()
    service = AnalysisService(engine)
    waiter = Waiter()
    try:
        return run_side(lambda q: service.handle_line(json.dumps(q), waiter.final), waiter, qs)
    finally:
        engine.close()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    binary = find_katago(download=True)
    with tempfile.TemporaryDirectory() as tmp:
        settings = KataGoSettings(
            cache_dir=Path(tmp), opencl_tuning="generic", extra={"nnRandomize": False}, num_analysis_threads=2
        )
        cfg, _ = prepare_config(settings)
        big = len(sys.argv) > 2 and sys.argv[2] == "big"
        qs = queries(n, big)
        results = {"direct": direct(binary, cfg, qs), "agent": agent(binary, settings, qs)}
    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}")
    kind = "19x19 positions + ownership + policy" if big else "9x9 positions"
    print(f"queries: {n} distinct {kind}, maxVisits 1, NN cache warm")
    for side, r in results.items():
        print(f"{side:7s} " + "  ".join(f"{k}={v:.3f}" for k, v in r.items()))
    for key in ("seq_median_ms", "seq_mean_ms", "burst_per_query_ms"):
        print(f"agent adds {key}: {results['agent'][key] - results['direct'][key]:+.3f} ms")


if __name__ == "__main__":
    main()
