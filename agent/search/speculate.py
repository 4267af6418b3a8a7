"""Speculative preparation of the next leaf while the network evaluates the current one.

With one search thread the search is serial: select a leaf, encode it, wait for the network,
back up. While the thread waits (the runtime releases the GIL), the interpreter is free, so a
helper thread does work the next playout would otherwise do after the network returns:

* **the last leaf's expansion**: with a speculator, a freshly evaluated node is backed up at once
  and its expansion (policy softmax, children sorted by prior) is left to the helper, or to the
  next playout if it walks through the node first (``Search.expand_deferred``);
* **the next leaf's inputs**: it predicts the next playout's leaf (the walk as if the leaf in
  flight came back with its parent's average value; where that walk would go into the leaf
  itself, whose children are unknown, the walk a second search thread would take now, with the
  leaf's virtual loss) and prepares its NN cache key, V7 features (ladders and pass-alive areas
  are most of the search's Python time) and post-processing context. When the search thread then selects
  that leaf it takes them instead of computing them; otherwise they are dropped;
* **the next walk**: below a node the current leaf's path does not pass through, nothing changes
  when that leaf is backed up, so the next playout follows the predicted walk from there on
  instead of selecting again.

Nothing the search decides depends on the helper (tested visit for visit against a search without
it): it walks the tree under the search's lock, creating the child nodes the selection would
create, draws the root's wide-root-noise numbers from a copy of the search's generator, and its
inputs are the ones the search thread would compute.

On g170-b6c96 (ONNX, one runtime thread, 2-vCPU VM) about 73 % of the leaves are predicted (62 %
with the virtual-loss walk alone), a
fifth of the selections are skipped, and visits per standalone network evaluation went from
0.84 to 0.89-0.90 (``docs/benchmarks.md``). The helper must be done before the network is: it
runs only while its measured time per leaf is under a quarter of the measured batch-1 evaluation
time (so not next to a fast GPU, where the search thread would wait for the interpreter), and only
with one search thread (more threads fill the network's time with their own work).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.network.postprocess import RowContext

if TYPE_CHECKING:
    from agent.search.mcts import Search
    from agent.search.node import Node
    from agent.search.position import SearchState

logger = logging.getLogger(__name__)

MAX_SHARE = 0.25  # helper time per leaf / batch-1 evaluation time above which it stays idle
REMEASURE_EVERY = 256  # while idle for that reason, still run once in this many evaluations


Walk = tuple[list[tuple["Node", int]], list[tuple["Node", int]], frozenset[int]]


@dataclass(frozen=True)
class Prepared:
    """A leaf's evaluation inputs, as ``Search._evaluate`` would compute them."""

    state: SearchState
    key: Any
    spatial: np.ndarray
    global_: np.ndarray
    ctx: RowContext


class Speculator:
    """The helper thread of one ``Search`` (started with ``start``, ended with ``stop``)."""

    def __init__(self, search: Search) -> None:
        self.search = search
        self._go = threading.Lock()  # released to wake the helper (cheaper than an Event)
        self._go.acquire()
        self._quit = False
        self._slot: Prepared | None = None
        self._walk: Walk | None = None
        self._seconds: float | None = None  # moving average of one preparation
        self._skipped = 0
        self._thread = threading.Thread(target=self._loop, name="search-speculate", daemon=True)
        self.prepared = 0
        self.used = 0

    def start(self) -> Speculator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._quit = True
        self._release()
        self._thread.join(timeout=5.0)

    def _release(self) -> None:
        with contextlib.suppress(RuntimeError):  # already released: a wake-up is pending
            self._go.release()

    def wake(self) -> None:
        """Called by the search thread just before it blocks on the network."""
        if self._worth_it():
            self._release()
        else:
            self._skipped += 1
            if self._skipped % REMEASURE_EVERY == 0:
                self._release()  # measure again now and then: a slow leaf should not end it

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

    def _worth_it(self) -> bool:
        nn = self.search.evaluator.batch_seconds(1)
        return nn is not None and (self._seconds is None or self._seconds < MAX_SHARE * nn)

    def _loop(self) -> None:
        search = self.search
        while True:
            self._go.acquire()
            if self._quit:
                return
            try:
                t0 = time.perf_counter()
                leaf = self._predict()
                if leaf is not None and (self._slot is None or self._slot.state is not leaf.state):
                    self._slot = search.prepare(leaf.state)
                    self.prepared += 1
                dt = time.perf_counter() - t0
                self._seconds = dt if self._seconds is None else 0.8 * self._seconds + 0.2 * dt
            except Exception:  # a prediction is never needed: log and go on
                logger.exception("search speculation failed")
