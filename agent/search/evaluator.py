"""``NNEvaluator``: batched, cached network evaluation shared by every search of an engine.

Search threads call ``evaluate(state, ...)`` and block until their row has been through the
network. Three ways to the network:

* **direct**: when the calling thread is the only one submitting (one search thread, one query)
  and nothing else runs, it calls ``NeuralNet.evaluate`` itself: no thread hand-over on the way.
* **runner**: a one-thread search whose runtime can cancel a run hands its requests to its own
  network thread (``agent.search.speculate``, ``Runner``), which also starts the predicted next
  leaf's run early; the evaluator still owns the cache, the symmetries and the counts.
* **server**: with several submitters a request joins the waiting list and a server thread (started
  on first need) runs the waiting requests (up to ``max_batch_size``, oldest first) one batch after
  another. The server never sleeps between batches while work waits, so the network does not wait
  for a search thread to be woken; the search threads' tree and feature work runs meanwhile (the
  runtimes release the GIL). Measured on a 2-vCPU VM with g170-b6c96 (ONNX, one runtime thread,
  two search threads): the gap between two network runs fell from 1.0-1.3 ms (threads taking
  turns as the runner) to 0.2-0.4 ms.

Filling batches: search threads register while they run (``add_submitters``). The server, when its
batch is smaller than ``min(max_batch_size, submitters)``, waits for the missing leaves (at most
half a batch-1 evaluation, 0.1 s) when that pays. Waiting costs the overlap of tree work with
the network: with full batches each row costs the batch's time over its rows plus the time the
server waited for the other threads' leaves, against one batch-1 evaluation when pipelined
(one thread's tree work overlapping another's evaluation). Both are measured (moving averages;
tried once when unknown), and the server waits when the first is under 0.8x the second: the
batch-1 time is measured while other threads compete for the CPU and full batches run alone,
so the margin keeps a small convolutional net on a CPU in the pipelined order, while a network
that batches well (a transformer on CPU, any network on a GPU) gets full batches.

The requesting thread post-processes its own row (the shared ``agent.network.postprocess`` code)
while the network runs the next batch, then KataGo's search
adjustments are applied: the pass cap of ``enablePassingHacks`` (pass weight at most 19x the
summed weight of the other legal moves) and the policy temperature.

The cache is an LRU keyed by the position's NN key (stones, ko, history the features can see,
komi, rules, root options) plus the symmetry and policy options, like KataGo's NN cache keyed by
position hash and symmetry. ``clear_cache`` empties it (the ``clear_cache`` action).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from agent.backends.base import NeuralNet, NNInputs, NNOutputs
from agent.errors import EngineError, InferenceError
from agent.game.symmetry import apply_symmetry
from agent.network.model import PostProcessParams
from agent.network.postprocess import NetEval, RowContext, postprocess_row

logger = logging.getLogger(__name__)

REPROBE_EVERY = 64  # batches run short before one more wait for a full batch re-measures it


class Runner(Protocol):
    """Something that runs one request's network evaluation in place of the evaluator (the
    search's speculator, which may have started it already): returns False to decline, else
    fills ``pending.raw``/``row`` (or ``error``) and counts the run (``record_run``)."""

    def run(self, full_key: Any, pending: Pending, on_wait: Callable[[], None] | None) -> bool: ...


@dataclass
class Pending:
    spatial: np.ndarray
    global_: np.ndarray
    ctx: RowContext
    symmetry: int
    done: threading.Event | None = None  # only for requests handed to the server thread
    raw: NNOutputs | None = None
    row: int = 0
    error: BaseException | None = None


def _ema(table: dict[int, float], key: int, value: float) -> None:
    old = table.get(key)
    table[key] = value if old is None else 0.8 * old + 0.2 * value


def average_evals(evals: list[NetEval]) -> NetEval:
    """Average several symmetries' evaluations (policy, values, ownership)."""
    if len(evals) == 1:
        return evals[0]
    n = float(len(evals))
    e0 = evals[0]

    def mean(name: str) -> float:
        return float(sum(getattr(e, name) for e in evals) / n)

    def policy() -> np.ndarray:
        return (np.sum([e.policy for e in evals], axis=0) / np.float32(n)).astype(np.float32)

    def ownership() -> np.ndarray:
        return (np.sum([e.white_ownership for e in evals], axis=0) / np.float32(n)).astype(np.float32)

    return replace(
        e0,
        policy_source=policy,
        white_win=mean("white_win"),
        white_loss=mean("white_loss"),
        no_result=mean("no_result"),
        white_score_mean=mean("white_score_mean"),
        white_score_mean_sq=mean("white_score_mean_sq"),
        white_lead=mean("white_lead"),
        score_stdev=mean("score_stdev"),
        var_time_left=mean("var_time_left"),
        shortterm_winloss_error=mean("shortterm_winloss_error"),
        shortterm_score_error=mean("shortterm_score_error"),
        ownership_source=ownership,
    )


class NNEvaluator:
    """Thread-safe batched evaluation with an LRU cache. Start with ``start()``; ``close()``."""

    def __init__(
        self,
        net: NeuralNet,
        post: PostProcessParams,
        *,
        max_batch_size: int = 8,
        cache_size: int = 1 << 16,
        randomize: bool = True,
        seed: int | None = None,
        buffer: int = 19,
        pass_alive_suicide: bool = False,
    ) -> None:
        self.net = net
        self.post = post
        self.max_batch_size = max(1, max_batch_size)
        self.cache_size = cache_size
        self.randomize = randomize
        self.buffer = buffer
        self.pass_alive_suicide = pass_alive_suicide  # header flag preferPassAliveUnderSuicideRules
        self._rand = random.Random(seed)
        self._rand_lock = threading.Lock()
        self._next_symmetry: int | None = None  # drawn by peek_symmetry, returned next
        self._before_peek: Any = None  # the generator's state before that draw
        self._cache: OrderedDict[Any, NetEval] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._cv = threading.Condition()
        self._waiting: deque[Pending] = deque()
        self._running = False
        self._closed = False
        self._server: threading.Thread | None = None
        self._submitters = 0
        self._batch_seconds: dict[int, float] = {}  # moving average of one batch's time, by size
        self._fill_seconds: dict[int, float] = {}  # moving average of the wait for a full batch
        self._waits_skipped = 0  # batches run short since the last wait for a full one
        self.rows = 0
        self.batches = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.nn_seconds = 0.0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> NNEvaluator:
        """Kept for the engine's life cycle: batches are run by the calling threads."""
        return self

    def close(self) -> None:
        """Refuse new requests; requests already waiting still run (the server thread drains
        them, then ends)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def add_submitters(self, n: int) -> None:
        """A search thread starts (``+1``) or stops (``-1``) submitting evaluations."""
        with self._cv:
            self._submitters += n
            self._cv.notify_all()

    @property
    def submitters(self) -> int:
        """Search threads currently submitting (all searches of the engine together)."""
        return self._submitters

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()

    def random_symmetry(self) -> int:
        if not self.randomize:
            return 0
        with self._rand_lock:
            if self._next_symmetry is not None:
                sym, self._next_symmetry = self._next_symmetry, None
                return sym
            return self._rand.randrange(8)

    def peek_symmetry(self) -> int:
        """The symmetry the next ``random_symmetry`` call will return (drawn now, kept)."""
        if not self.randomize:
            return 0
        with self._rand_lock:
            if self._next_symmetry is None:
                self._before_peek = self._rand.getstate()
                self._next_symmetry = self._rand.randrange(8)
            return self._next_symmetry

    def sample_symmetries(self, n: int) -> list[int]:
        if n <= 1:
            return [self.random_symmetry()]
        if not self.randomize:
            return list(range(min(n, 8)))
        with self._rand_lock:
            if self._next_symmetry is not None:  # undo a peek: the draws are the ones made without it
                self._rand.setstate(self._before_peek)
                self._next_symmetry = None
            return self._rand.sample(range(8), min(n, 8))

    @staticmethod
    def full_key(key: Any, symmetry: int, optimism: float, temperature: float, passing_hacks: bool) -> Any:
        """The cache key of one evaluation (``evaluate``'s arguments)."""
        return (key, symmetry, optimism, temperature, passing_hacks)

    def is_cached(self, full_key: Any) -> bool:
        with self._cache_lock:
            return full_key in self._cache

    def record_run(self, rows: int, seconds: float) -> None:
        """Count a network run made outside this evaluator for it (a ``Runner``'s)."""
        self.nn_seconds += seconds
        _ema(self._batch_seconds, rows, seconds)
        self.rows += rows
        self.batches += 1

    def batch_seconds(self, size: int) -> float | None:
        """Moving average of one network call on ``size`` rows (None until measured)."""
        return self._batch_seconds.get(size)

    def stats(self) -> dict[str, Any]:
        return {
            "nn_rows": self.rows,
            "nn_batches": self.batches,
            "nn_avg_batch": round(self.rows / self.batches, 3) if self.batches else 0.0,
            "nn_seconds": round(self.nn_seconds, 3),
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "cache_entries": len(self._cache),
        }

    # ------------------------------------------------------------------- evaluate
    def evaluate(
        self,
        key: Any,
        encode: Any,
        ctx: RowContext | Any,
        *,
        symmetry: int,
        optimism: float,
        temperature: float = 1.0,
        passing_hacks: bool = True,
        on_wait: Callable[[], None] | None = None,
        runner: Runner | None = None,
    ) -> NetEval:
        """Evaluate one position. ``encode()`` returns ``(spatial [22,H,W], global [19])`` in the
        canonical frame; ``ctx`` is a ``RowContext`` or a callable making one from those features.
        Both are only used on a cache miss. Blocks until the batch ran; ``on_wait()`` is called
        just before this thread blocks on the network (it releases the GIL then), so work that
        can overlap the evaluation can start (the search's speculation, see ``speculate``).
        A ``runner`` may take the request over (``Runner.run``); where it declines, the request
        goes the usual way, without ``on_wait``."""
        full_key = self.full_key(key, symmetry, optimism, temperature, passing_hacks)
        with self._cache_lock:
            hit = self._cache.get(full_key)
            if hit is not None:
                self._cache.move_to_end(full_key)
                self.cache_hits += 1
                return hit
            self.cache_misses += 1
        spatial, global_ = encode()
        if not isinstance(ctx, RowContext):
            ctx = ctx(spatial, global_)
        spatial = np.ascontiguousarray(apply_symmetry(spatial, symmetry), dtype=np.float32)
        pending = Pending(spatial, np.asarray(global_, np.float32), ctx, symmetry)
        if runner is None:
            self._submit(pending, on_wait)
        elif not runner.run(full_key, pending, on_wait):
            self._submit(pending)
        if pending.error is not None:
            raise InferenceError(f"network evaluation failed: {pending.error}") from pending.error
        assert pending.raw is not None
        try:
            result = postprocess_row(
                pending.raw,
                pending.row,
                self.post,
                pending.ctx,
                policy_optimism=optimism,
                policy_temperature=temperature,
                symmetry=pending.symmetry,
                pass_cap=passing_hacks,
            )
        except (ValueError, FloatingPointError) as exc:
            raise InferenceError(f"network evaluation failed: {exc}") from exc
        with self._cache_lock:
            self._cache[full_key] = result
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return result

    # -------------------------------------------------------------------- batching
    def _submit(self, pending: Pending, on_wait: Callable[[], None] | None = None) -> None:
        """Returns once ``pending`` has run (module notes): directly in this thread when it is
        the only submitter and nothing runs, otherwise through the server thread."""
        cv = self._cv
        with cv:
            if self._closed:
                raise EngineError("NN evaluator is closed")
            if self._submitters <= 1 and not self._running and not self._waiting:
                self._running = True
            else:
                pending.done = threading.Event()
                self._waiting.append(pending)
                if self._server is None:
                    self._server = threading.Thread(target=self._serve, name="nn-server", daemon=True)
                    self._server.start()
                cv.notify_all()
        if on_wait is not None:
            on_wait()
        if pending.done is not None:
            pending.done.wait()
            return
        try:
            self._run_batch([pending])
        finally:
            with cv:
                self._running = False
                cv.notify_all()

    def _serve(self) -> None:
        """The server thread: runs whatever waits, one batch after another without sleeping in
        between, so the network never waits for a search thread to wake up."""
        cv = self._cv
        while True:
            with cv:
                while not self._waiting or self._running:
                    if self._closed and not self._waiting:
                        self._server = None
                        return  # closed and drained
                    cv.wait()
                self._running = True
                waiting = self._waiting
                target = min(self.max_batch_size, self._submitters)
                if len(waiting) < target and self._batching_pays(target):
                    t0 = time.monotonic()
                    deadline = t0 + self._fill_wait()
                    while len(waiting) < min(self.max_batch_size, self._submitters):
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        cv.wait(left)
                    if len(waiting) >= target:
                        _ema(self._fill_seconds, target, time.monotonic() - t0)
                batch = [waiting.popleft() for _ in range(min(self.max_batch_size, len(waiting)))]
            try:
                self._run_batch(batch)
            finally:
                with cv:
                    self._running = False
                    cv.notify_all()

    def _batching_pays(self, size: int) -> bool:
        """Whether waiting for a full batch of ``size`` beats running short, by the measurements.
        Judged "no", it still waits once every ``REPROBE_EVERY`` batches: only a wait measures the
        fill time again, so a spike (a loaded machine, one slow client) would otherwise switch
        batching off for good."""
        t = self._batch_seconds
        fill = self._fill_seconds.get(size)
        if size not in t or 1 not in t or fill is None:
            return True  # unknown: try it (the measurements decide from then on)
        if t[size] / size + fill / max(1, size - 1) < 0.8 * t[1]:
            return True
        self._waits_skipped += 1
        if self._waits_skipped >= REPROBE_EVERY:
            self._waits_skipped = 0
            return True
        return False

    def _fill_wait(self) -> float:
        one = self._batch_seconds.get(1)
        return 0.1 if one is None else min(0.1, 0.5 * one)

    def _run_batch(self, batch: list[Pending]) -> None:
        """Run the network on ``batch`` and hand every request its raw row (post-processing is
        the requesting thread's work, done while the network runs the next batch)."""
        try:
            if len(batch) == 1:
                spatial, global_ = batch[0].spatial[None], batch[0].global_[None]
            else:
                spatial = np.stack([p.spatial for p in batch])
                global_ = np.stack([p.global_ for p in batch])
            t0 = time.perf_counter()
            raw = self.net.evaluate(NNInputs(spatial, global_))
            dt = time.perf_counter() - t0
            self.nn_seconds += dt
            _ema(self._batch_seconds, len(batch), dt)
            self.rows += len(batch)
            self.batches += 1
            for i, p in enumerate(batch):
                p.raw = raw
                p.row = i
        except Exception as exc:  # handed to every waiting search thread, re-raised there
            logger.exception("network evaluation failed for a batch of %d", len(batch))
            for p in batch:
                p.error = exc
        finally:
            for p in batch:
                if p.done is not None:
                    p.done.set()
