"""Search benchmark: visits/s of the native engine next to the network's own evals/s.

Every position is analysed with a fixed ``maxVisits`` through the real ``AnalysisService`` (the
path every transport uses), the NN cache cleared between thread counts. Visits/s is the visits the
responses report divided by wall time.

The search overhead target is visits/s >= 0.9 x evals/s, where evals/s is the **network's own**
throughput measured standalone on the same ``NeuralNet`` object (so the same runtime and runtime
threads) at the batch size the search is allowed to form (``nnMaxBatchSize`` = search threads):
``NeuralNet.evaluate`` alone on batches of real V7 inputs of the benchmark positions, timed in
slices before, between and after the positions' searches (the load of a shared machine drifts).
Visits/s counts only the time the searches ran. A visit costs one evaluation, so
anything below 1.0 is tree work, feature extraction, post-processing or waiting.

The evaluator's own count (rows evaluated / seconds spent inside ``evaluate`` during the search)
is reported too, as ``nn_evals_per_s`` and ``visits_over_evals_during_search``; it is *not* the
target's denominator: when the search's Python work competes with the runtime's threads for the
CPU, the network runs slower during the search and that ratio hides the overhead.

CPU time, which other jobs on a shared machine disturb far less than wall time: the process's CPU
time during the searches and the CPU time the calling threads spent inside the network
(``CpuTimedNet``), per visit, as ``cpu_ms_per_visit``, ``network_cpu_ms_per_visit`` and
``search_cpu_ms_per_visit`` (the rest: the search's own work), and
``visits_over_evals_cpu = network / total``, what the overhead ratio is on a core of one's own.
They count the network's CPU only where it runs in the search thread: one search thread and one
runtime thread (``--search-threads 1 --threads 1``, as at one core).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.backends.base import Cancel, NetInfo, NeuralNet, NNInputs, NNOutputs
from agent.bench.positions import BenchPosition, encode_batch
from agent.network.model import PostProcessParams

STANDALONE_SECONDS = 3.0


@dataclass(frozen=True)
class SearchResult:
    threads: int
    visits: int
    positions: int
    wall_s: float
    visits_per_s: float
    standalone_evals_per_s: float
    nn_evals_per_s: float
    avg_batch: float
    nn_time_share: float
    cpu_s: float = 0.0  # process CPU time during the searches
    network_cpu_s: float = 0.0  # of which inside ``NeuralNet.evaluate`` (calling threads)

    @property
    def overhead_ratio(self) -> float:
        """visits/s divided by the network's standalone evals/s; >= 0.9 is the target."""
        return self.visits_per_s / self.standalone_evals_per_s if self.standalone_evals_per_s > 0 else 0.0

    @property
    def during_search_ratio(self) -> float:
        """visits/s divided by the evals/s the evaluator saw during the search (flattering)."""
        return self.visits_per_s / self.nn_evals_per_s if self.nn_evals_per_s > 0 else 0.0

    @property
    def cpu_ratio(self) -> float:
        """The network's share of the CPU time (one search and one runtime thread: the overhead
        ratio on a core of its own)."""
        return self.network_cpu_s / self.cpu_s if self.cpu_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        total = max(1.0, self.visits_per_s * self.wall_s)  # visits of all the searches
        return {
            "threads": self.threads,
            "visits_per_query": self.visits,
            "positions": self.positions,
            "wall_s": round(self.wall_s, 3),
            "visits_per_s": round(self.visits_per_s, 3),
            "standalone_evals_per_s": round(self.standalone_evals_per_s, 3),
            "standalone_batch": self.threads,
            "nn_evals_per_s": round(self.nn_evals_per_s, 3),
            "avg_batch": round(self.avg_batch, 3),
            "nn_time_share": round(self.nn_time_share, 3),
            "visits_over_evals": round(self.overhead_ratio, 3),
            "visits_over_evals_during_search": round(self.during_search_ratio, 3),
            "cpu_ms_per_visit": round(self.cpu_s / total * 1e3, 3),
            "network_cpu_ms_per_visit": round(self.network_cpu_s / total * 1e3, 3),
            "search_cpu_ms_per_visit": round((self.cpu_s - self.network_cpu_s) / total * 1e3, 3),
            "visits_over_evals_cpu": round(self.cpu_ratio, 3),
        }


class CpuTimedNet(NeuralNet):
    """``net`` with the CPU time its callers' threads spend inside ``evaluate`` counted."""

    def __init__(self, net: NeuralNet) -> None:
        self.net = net
        self.cpu_s = 0.0

    @property
    def info(self) -> NetInfo:
        return self.net.info

    @property
    def postprocess_params(self) -> PostProcessParams:
        return self.net.postprocess_params

    def evaluate(self, inputs: NNInputs) -> NNOutputs:
        t0 = time.thread_time()
        try:
            return self.net.evaluate(inputs)
        finally:
            self.cpu_s += time.thread_time() - t0

    def make_cancel(self) -> Cancel | None:
        return self.net.make_cancel()

    def evaluate_cancellable(self, inputs: NNInputs, cancel: Cancel) -> NNOutputs:
        t0 = time.thread_time()
        try:
            return self.net.evaluate_cancellable(inputs, cancel)
        finally:
            self.cpu_s += time.thread_time() - t0

    def close(self) -> None:
        self.net.close()


def standalone_evals_per_s(
    net: NeuralNet, positions: list[BenchPosition], batch: int, seconds: float
) -> float:
    """``net.evaluate`` alone on batches of ``batch`` real inputs for about ``seconds``."""
    inputs = encode_batch(positions, batch)
    net.evaluate(inputs)
    n = 0
    t0 = time.perf_counter()
    while True:
        net.evaluate(inputs)
        n += batch
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt


def run_search_bench(
    net: NeuralNet,
    post: PostProcessParams,
    positions: list[BenchPosition],
    *,
    threads: int,
    visits: int,
    timeout_s: float = 600.0,
    standalone_s: float = STANDALONE_SECONDS,
) -> SearchResult:
    """Analyse every position once with ``visits`` visits and ``threads`` search threads."""
    from agent.app.startup import EngineRecipe, assemble_engine
    from agent.engines.native import NativeEngine
    from agent.protocol.service import AnalysisService
    from agent.search.params import SearchParams

    params = SearchParams(max_visits=visits, num_threads=threads)
    batch = max(1, threads)
    timed = CpuTimedNet(net)
    # The daemon's own assembly; the search's evaluator counters are the native engine's.
    engine, _ = assemble_engine(timed, EngineRecipe(params=params, max_batch_size=batch, seed=1))
    if not isinstance(engine, NativeEngine):
        raise TypeError(f"the search benchmark needs the native engine, got {type(engine).__name__}")
    service = AnalysisService(engine)
    finals: list[dict[str, Any]] = []
    finished = threading.Event()

    def emit(resp: dict[str, Any]) -> None:
        if resp.get("isDuringSearch"):
            return
        finals.append(resp)
        finished.set()

    slice_s = standalone_s / (len(positions) + 1)
    eps: list[float] = []
    wall = 0.0
    cpu = 0.0
    net_cpu0 = 0.0
    try:
        # Warm-up (compiles kernels, fills allocator pools); not timed and not counted.
        warm = AnalysisService(engine)
        warm_done = threading.Event()
        warm.handle_query(positions[0].query("warmup", min(visits, 8)), lambda r: warm_done.set())
        warm_done.wait(timeout_s)
        engine.clear_cache()
        before = engine.evaluator.stats()
        net_cpu0 = timed.cpu_s
        # The network alone is timed between the searches (the load of a shared machine drifts).
        for i, pos in enumerate(positions):
            eps.append(standalone_evals_per_s(net, positions, batch, slice_s))
            finished.clear()
            start = time.perf_counter()
            cpu0 = time.process_time()
            service.handle_query(pos.query(f"bench-{i}", visits), emit)
            if not finished.wait(timeout_s):
                raise TimeoutError(f"search benchmark did not finish within {timeout_s:.0f} s")
            cpu += time.process_time() - cpu0
            wall += time.perf_counter() - start
        eps.append(standalone_evals_per_s(net, positions, batch, slice_s))
        after = engine.evaluator.stats()
    finally:
        engine.close(timeout=5.0)
    errors = [r for r in finals if "error" in r]
    if errors:
        raise RuntimeError(f"search benchmark query failed: {errors[0]}")
    total_visits = sum(int(r["rootInfo"]["visits"]) for r in finals)
    rows = after["nn_rows"] - before["nn_rows"]
    nn_s = after["nn_seconds"] - before["nn_seconds"]
    batches = after.get("nn_batches", 0) - before.get("nn_batches", 0)
    return SearchResult(
        threads=threads,
        visits=visits,
        positions=len(positions),
        wall_s=wall,
        visits_per_s=total_visits / wall,
        standalone_evals_per_s=sum(eps) / len(eps),
        nn_evals_per_s=rows / nn_s if nn_s > 0 else 0.0,
        avg_batch=rows / batches if batches else 0.0,
        nn_time_share=nn_s / wall if wall > 0 else 0.0,
        cpu_s=cpu,
        network_cpu_s=timed.cpu_s - net_cpu0,
    )


def run_search_benches(
    make_net: Callable[[], NeuralNet],
    post: PostProcessParams,
    positions: list[BenchPosition],
    *,
    thread_counts: list[int],
    visits: int,
) -> list[SearchResult]:
    out = []
    for t in thread_counts:
        net = make_net()
        try:
            out.append(run_search_bench(net, post, positions, threads=t, visits=visits))
        finally:
            net.close()
    return out
