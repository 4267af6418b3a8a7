"""Speculation with one search thread: the next leaf is predicted, prepared and (where the
runtime can cancel a run) evaluated while the network evaluates the current one.

With one search thread the search is serial: select a leaf, encode it, wait for the network,
back up. While the network runs (the runtimes release the GIL) the interpreter is free, and this
module uses that time for work the next playout would otherwise do after the network returns:

* **the last leaf's expansion**: with a speculator, a freshly evaluated node is backed up at once
  and its expansion (policy softmax, children sorted by prior) is done while the network runs the
  next leaf, or by the next playout if it walks through the node first (``Search.expand_deferred``);
* **the next leaf's inputs**: it predicts the next playout's leaf (the walk as if the leaf in
  flight came back with its parent's average value; where that walk would go into the leaf
  itself, whose children are unknown, the walk a second search thread would take now, with the
  leaf's virtual loss) and prepares its NN cache key, V7 features (ladders and pass-alive areas
  are most of the search's Python time) and post-processing context. When the search thread then
  selects that leaf it takes them instead of computing them; otherwise they are dropped;
* **the next walk**: below a node the current leaf's path does not pass through, nothing changes
  when that leaf is backed up, so the next playout follows the predicted walk from there on
  instead of selecting again;
* **the next evaluation** (network mode, below): the predicted leaf's network run starts the
  moment the current one ends, so on a right prediction the network never waits for the
  search's back-up and selection.

Two modes, by runtime:

* **network mode** (``NeuralNet.make_cancel`` gives a token: ONNX Runtime, through its
  ``RunOptions.terminate``): every evaluation of the search runs on this module's network thread,
  one after the other. The search thread, once its leaf's run is queued, predicts and prepares
  the next leaf and queues that run behind it, with the symmetry the search will draw next
  (``NNEvaluator.peek_symmetry``); then it waits. When it next asks for a leaf, the queued run is
  either that leaf's (waited for, usually already running) or is cancelled, as soon as the
  playout leaves the predicted walk; the run the search asked for then starts at once.
  Only runs the search asked for are used or cached, so the search is unchanged.
* **helper mode** (runtimes that cannot abandon a run: LiteRT, TensorRT, numpy): a helper thread
  predicts and prepares while the search thread runs the network itself.

Nothing the search decides depends on speculation (tested visit for visit, random symmetries
included, in both modes): the prediction walks the tree under the search's lock, creating the
child nodes the selection would create, draws the root's wide-root-noise numbers from a copy of
the search's generator, and its inputs and symmetry are the ones the search would use.

On g170-b6c96 (ONNX, one runtime thread, 2-vCPU VM) about 73-78 % of the leaves are predicted
(62 % with the virtual-loss walk alone), a fifth of the selections are skipped, and visits per
standalone network evaluation went from 0.84 (none) to 0.89 (helper mode) and 0.90-0.94 (network
mode; ``docs/benchmarks.md``). Speculation stays off where the median time of a prediction
exceeds a share of the measured batch-1 evaluation time (a quarter in helper mode, whose helper
must be done before the network; 0.6 in network mode, where it runs beside the evaluation), e.g.
next to a fast GPU, re-measuring once in 16 evaluations; and with more than one search thread
(their own work then fills the network's time).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from agent.backends.base import Cancel, NNInputs, NNOutputs
from agent.game.symmetry import apply_symmetry
from agent.network.postprocess import RowContext
from agent.search.evaluator import NNEvaluator, Pending
from agent.search.node import Node
from agent.search.params import SearchParams
from agent.search.position import SearchState

logger = logging.getLogger(__name__)

MAX_SHARE = 0.25  # helper mode: prediction time / batch-1 evaluation time above which it idles
# network mode: the same limit; the prediction runs in the search thread while the network runs,
# so it only costs where the search thread's whole turn outlasts the evaluation
PIPELINED_MAX_SHARE = 0.6
SAMPLES = 8  # prediction times kept; their median decides (one cold first leaf must not)
REMEASURE_EVERY = 16  # while idle for that reason, still predict once in this many evaluations


Walk = tuple[list[tuple[Node, int]], list[tuple[Node, int]], frozenset[int]]


@dataclass(frozen=True)
class Prepared:
    """A leaf's evaluation inputs, as ``Search._evaluate`` would compute them."""

    state: SearchState
    key: Any
    spatial: np.ndarray
    global_: np.ndarray
    ctx: RowContext

    def inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """``NNEvaluator.evaluate``'s ``encode``: the features made already."""
        return self.spatial, self.global_


class SpeculatedSearch(Protocol):
    """What the speculator uses of its ``agent.search.mcts.Search``: declared here, so that the
    search imports the speculator and not the other way round."""

    @property
    def evaluator(self) -> NNEvaluator: ...

    @property
    def params(self) -> SearchParams: ...

    @property
    def lock(self) -> threading.Lock: ...

    @property
    def inflight_path(self) -> list[tuple[Node, int]]: ...

    def expand_deferred(self) -> None: ...

    def peek_leaf(self, path: list[tuple[Node, int]] | None = None) -> Node | None: ...

    def peek_leaf_neutral(self, path: list[tuple[Node, int]]) -> Node | None: ...

    def prepare(self, state: SearchState) -> Prepared: ...


class _Job:
    """One network run on the speculator's network thread: a leaf the search asked for, or the
    predicted next leaf (``cancel`` set: abandoned if the prediction turns out wrong)."""

    __slots__ = ("cancel", "done", "dropped", "error", "full_key", "inputs", "raw", "seconds", "started")

    def __init__(
        self, full_key: Any, spatial: np.ndarray, global_: np.ndarray, cancel: Cancel | None
    ) -> None:
        self.full_key = full_key
        self.inputs = NNInputs(spatial[None], global_[None])
        self.cancel = cancel
        self.dropped = False
        self.raw: NNOutputs | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0
        # plain locks, held until the network thread releases them (cheaper than Events; each is
        # waited for at most once, by the search thread)
        self.started = threading.Lock()
        self.started.acquire()
        self.done = threading.Lock()
        self.done.acquire()


class Speculator:
    """The helper of one ``Search`` (started with ``start``, ended with ``stop``); the search
    passes ``on_wait`` and ``runner`` to each leaf's ``NNEvaluator.evaluate``."""

    def __init__(self, search: SpeculatedSearch) -> None:
        self.search = search
        self.net = search.evaluator.net
        self.pipelined = self.net.make_cancel() is not None
        self._go = threading.Lock()  # helper mode: released to wake the helper (cheaper than an Event)
        self._go.acquire()
        self._cv = threading.Condition()  # network mode: guards _jobs
        self._jobs: deque[_Job] = deque()
        self._next: _Job | None = None  # network mode: the run started for the predicted leaf
        self._quit = False
        self._slot: Prepared | None = None
        self._walk: Walk | None = None
        self._times: deque[float] = deque(maxlen=SAMPLES)  # recent prediction times
        self._skipped = 0
        target = self._serve if self.pipelined else self._loop
        name = "search-network" if self.pipelined else "search-speculate"
        self._thread = threading.Thread(target=target, name=name, daemon=True)
        self.prepared = 0
        self.used = 0
        self.runs_started = 0  # network mode: predicted leaves whose evaluation was started
        self.runs_used = 0  # ... and of those, the ones the search asked for

    @property
    def on_wait(self) -> Callable[[], None]:
        return self._predict_next if self.pipelined else self.wake

    @property
    def runner(self) -> Speculator | None:
        return self if self.pipelined else None

    def start(self) -> Speculator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._drop_next()
        with self._cv:
            self._quit = True
            self._cv.notify()
        self._release()
        self._thread.join(timeout=5.0)

    def _release(self) -> None:
        with contextlib.suppress(RuntimeError):  # already released: a wake-up is pending
            self._go.release()

    def _worth_it(self) -> bool:
        nn = self.search.evaluator.batch_seconds(1)
        times = self._times
        share = PIPELINED_MAX_SHARE if self.pipelined else MAX_SHARE
        if nn is not None and (len(times) < 3 or sorted(times)[len(times) // 2] < share * nn):
            return True
        self._skipped += 1
        return self._skipped % REMEASURE_EVERY == 0  # measure again now and then

    def take(self, state: SearchState) -> Prepared | None:
        """The prepared inputs for ``state``, if the prediction was right."""
        slot = self._slot
        if slot is not None and slot.state is state:
            self.used += 1
            return slot
        return None

    def take_walk(self) -> Walk | None:
        """The predicted walk, the path of the evaluation in flight it was predicted for, and
        the ids of that path's nodes, for the next playout (once): below a node off that path
        nothing has changed since the prediction, so the walk's choices there are the ones
        selection would make."""
        walk, self._walk = self._walk, None
        return walk

    def _predict(self) -> Node | None:
        """The next playout's leaf (its walk kept for ``take_walk``)."""
        search = self.search
        with search.lock:
            search.expand_deferred()  # the last leaf's expansion, left to this thread
            path: list[tuple[Node, int]] = []
            leaf = search.peek_leaf_neutral(path)
            if leaf is None:
                path = []
                leaf = search.peek_leaf(path)
            inflight = search.inflight_path
            if leaf is not None and inflight:
                self._walk = (path, inflight, frozenset(id(node) for node, _ in inflight))
        return leaf

    def _prepare(self, leaf: Node) -> Prepared:
        slot = self._slot
        if slot is None or slot.state is not leaf.state:
            slot = self._slot = self.search.prepare(leaf.state)
            self.prepared += 1
        return slot

    def _timed(self, t0: float) -> None:
        self._times.append(time.perf_counter() - t0)

    # ------------------------------------------------------------- helper mode
    def wake(self) -> None:
        """Helper mode: called by the search thread just before it blocks on the network."""
        if self._worth_it():
            self._release()

    def _loop(self) -> None:
        while True:
            self._go.acquire()
            if self._quit:
                return
            try:
                t0 = time.perf_counter()
                leaf = self._predict()
                if leaf is not None:
                    self._prepare(leaf)
                self._timed(t0)
            except Exception:  # a prediction is never needed: log and go on
                logger.exception("search speculation failed")

    # ------------------------------------------------------------ network mode
    def run(self, full_key: Any, pending: Pending, on_wait: Callable[[], None] | None) -> bool:
        """``Runner.run``: the search asks for ``full_key``. If the predicted leaf's run is that
        one it is waited for; else that run is abandoned and this one goes to the network thread
        (declined when speculation does not pay, so the evaluator runs it in this thread)."""
        job, self._next = self._next, None
        if job is not None and job.full_key == full_key:
            self.runs_used += 1
        else:
            if job is not None:
                self._drop(job)
            if self.search.evaluator.submitters > 1 or not self._worth_it():
                # other searches run too: their requests and this one batch through the evaluator
                return False
            job = _Job(full_key, pending.spatial, pending.global_, None)
            self._queue(job)
            # Let the network thread take the interpreter and start the run before this thread
            # goes on with Python work (it would otherwise wait out a GIL switch interval).
            job.started.acquire()
        if on_wait is not None:
            on_wait()
        job.done.acquire()
        if job.error is None:
            self.search.evaluator.record_run(1, job.seconds)
        pending.raw, pending.row, pending.error = job.raw, 0, job.error
        return True

    def _predict_next(self) -> None:
        """Network mode, in the search thread while the network runs the current leaf: predict
        the next leaf, prepare its inputs and queue its evaluation behind the current one."""
        t0 = time.perf_counter()
        try:
            leaf = self._predict()
            if leaf is None:
                return
            slot = self._prepare(leaf)
            search = self.search
            ev = search.evaluator
            p = search.params
            sym = ev.peek_symmetry()  # the symmetry the search will draw for its next leaf
            key = ev.full_key(
                slot.key, sym, p.policy_optimism, p.nn_policy_temperature, p.enable_passing_hacks
            )
            if ev.is_cached(key) or ev.submitters > 1:
                return  # nothing to run, or other searches' leaves should share its batch
            spatial = np.ascontiguousarray(apply_symmetry(slot.spatial, sym), dtype=np.float32)
            job = _Job(key, spatial, np.asarray(slot.global_, np.float32), self.net.make_cancel())
            self._next = job
            self.runs_started += 1
            self._queue(job)
        except Exception:  # a prediction is never needed: log and go on
            logger.exception("search speculation failed")
        finally:
            self._timed(t0)

    def _queue(self, job: _Job) -> None:
        with self._cv:
            self._jobs.append(job)
            self._cv.notify()

    def mispredicted(self) -> None:
        """The playout left the predicted walk (call from the search thread): abandon the
        predicted leaf's run now rather than once the playout asks for its own leaf."""
        self._drop_next()

    def _drop(self, job: _Job) -> None:
        job.dropped = True
        if job.cancel is not None:
            job.cancel.cancel()

    def _drop_next(self) -> None:
        job, self._next = self._next, None
        if job is not None:
            self._drop(job)

    def _serve(self) -> None:
        """The network thread: runs the queued jobs one after another, so a predicted leaf's
        run starts the moment the current one ends, while the search thread backs that one up."""
        cv = self._cv
        net = self.net
        while True:
            with cv:
                while not self._jobs:
                    if self._quit:
                        return
                    cv.wait()
                job = self._jobs.popleft()
            if not job.dropped:
                job.started.release()
                t0 = time.perf_counter()
                try:
                    if job.cancel is None:
                        job.raw = net.evaluate(job.inputs)
                    else:
                        job.raw = net.evaluate_cancellable(job.inputs, job.cancel)
                except BaseException as exc:  # handed to the search thread (or dropped with the job)
                    job.error = exc
                job.seconds = time.perf_counter() - t0
            job.done.release()
