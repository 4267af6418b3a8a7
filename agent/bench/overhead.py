"""Search overhead benchmark: visits/s of the native search next to the network's evals/s.

``python -m agent.bench.overhead --model g170-b6c96...bin.gz --runtime onnx --threads 1 2``

For each thread count ``t``:

* **evals/s** - ``NeuralNet.evaluate`` alone on batches of ``t`` real V7 inputs (positions of a
  short opening, 19x19), half of ``--seconds`` before and half after the search, averaged;
* **visits/s** - a fresh search (NN cache cleared, so every visit is a real evaluation) from the
  same opening position with ``numSearchThreads = t`` and ``nnMaxBatchSize = t``, for
  ``--visits`` visits, reported as root visits per wall-clock second.

``overhead = visits/s / evals/s``; the target (issue #21) is >= 0.95 at one core. Printed as
JSON; the machine and load matter, so record them with the figures.

With one search thread the network runs in the search thread (``--runtime-threads 1``, the
default), so the thread's CPU time splits into the network's (inside ``NeuralNet.evaluate``) and
the search's own Python: ``search_ms_per_visit`` is the latter, per visit. It is the figure other
jobs on the machine disturb least (CPU time, not wall time), and at one core the overhead ratio
is about ``network / (network + search)`` per visit. Pin to one core with ``taskset -c 0``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.backends.base import NNInputs
from agent.bench.search import CpuTimedNet

OPENING = [["B", "Q16"], ["W", "D4"], ["B", "Q3"], ["W", "D16"], ["B", "C3"], ["W", "D3"], ["B", "C4"]]


def _inputs(batch: int) -> tuple[np.ndarray, np.ndarray]:
    from agent.game.features import encode_v7
    from agent.game.position import replay_query

    states = replay_query(OPENING, rules="chinese", komi=7.5)
    rows = [encode_v7(states[i % len(states)]) for i in range(batch)]
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def evals_per_second(net: Any, batch: int, seconds: float) -> float:
    sp, gl = _inputs(batch)
    inputs = NNInputs(sp.astype(np.float32), gl.astype(np.float32))
    net.evaluate(inputs)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        net.evaluate(inputs)
        n += batch
    return n / (time.perf_counter() - t0)


def visits_per_second(net: Any, post: Any, threads: int, visits: int) -> tuple[float, dict[str, Any]]:
    from agent.protocol.query import parse_query
    from agent.protocol.replay import build_turns
    from agent.search.evaluator import NNEvaluator
    from agent.search.mcts import Search
    from agent.search.params import SearchParams
    from agent.search.position import SearchState

    params = SearchParams(max_visits=visits, num_threads=threads)
    q = {"id": "bench", "moves": OPENING, "rules": "chinese", "komi": 7.5, "boardXSize": 19, "boardYSize": 19}
    turns, _ = build_turns(parse_query(q, params))
    timed = CpuTimedNet(net)
    ev = NNEvaluator(timed, post, max_batch_size=threads, randomize=True, seed=1).start()
    try:
        search = Search(ev, params, SearchState(turns[-1][1]), seed=1)
        t0 = time.perf_counter()
        c0 = time.thread_time()
        search.run()
        cpu = time.thread_time() - c0
        dt = time.perf_counter() - t0
    finally:
        ev.close()
    stats = ev.stats()
    n = max(1, search.root.visits)
    if threads == 1:
        # the network ran in this thread (one runtime thread; no speculation on one CPU)
        stats["cpu_ms_per_visit"] = round(cpu / n * 1e3, 3)
        stats["network_cpu_ms_per_visit"] = round(timed.cpu_s / n * 1e3, 3)
        stats["search_ms_per_visit"] = round((cpu - timed.cpu_s) / n * 1e3, 3)
    return search.root.visits / dt, stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--runtime", default="onnx")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--visits", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runtime-threads", type=int, default=1, help="the runtime's threads (0: its default)")
    ap.add_argument("--rounds", type=int, default=1, help="searches per thread count (a row each)")
    args = ap.parse_args(argv)
    from agent.models.serving import RuntimeEntry, open_network
    from agent.models.store import ModelStore, default_store_root

    net, _ = open_network(
        Path(args.model),
        [RuntimeEntry(args.runtime)],
        ModelStore(default_store_root()),
        threads=args.runtime_threads,
    )
    post = net.postprocess_params
    out: dict[str, Any] = {
        "model": os.path.basename(args.model),
        "runtime": args.runtime,
        "cpus": os.cpu_count(),
    }
    out["load_avg"] = os.getloadavg()[0]
    out["cpus_allowed"] = sorted(os.sched_getaffinity(0))
    out["runtime_threads"] = args.runtime_threads
    rows = []
    for t in [t for t in args.threads for _ in range(args.rounds)]:
        # evals measured before and after the search: the machine's load drifts
        e1 = evals_per_second(net, t, args.seconds / 2)
        vps, stats = visits_per_second(net, post, t, args.visits)
        eps = (e1 + evals_per_second(net, t, args.seconds / 2)) / 2
        rows.append(
            {
                "threads": t,
                "batch": t,
                "evals_per_s": round(eps, 2),
                "visits_per_s": round(vps, 2),
                "overhead_ratio": round(vps / eps, 3),
                "avg_batch": stats["nn_avg_batch"],
                **{k: v for k, v in stats.items() if k.endswith("_per_visit")},
            }
        )
    out["rows"] = rows
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
