"""``NativeEngine``: KataGo-style analysis with our MCTS over an in-process ``NeuralNet``.

Like ``katago analysis``: validated queries become one task per analysed turn, kept in a
priority queue (higher ``priority`` first, ties to the earlier task); ``numAnalysisThreads``
workers each run one search at a time with ``numSearchThreads`` threads; all searches share one
``NNEvaluator`` (batching across threads and searches, one NN cache). A query arrives as an
``AnalysisQuery``: the protocol has parsed it and replayed its moves once, so a task searches the
state the protocol replayed and answers through the query's ``render`` (the protocol's response
JSON; the engine itself writes only ``noResults`` and error objects).

Task life cycle and the "exactly one final response" promise:

* QUEUED -> terminated before a worker takes it: ``{"id","turnNumber","isDuringSearch":false,
  "noResults":true}`` is emitted by the terminating call;
* RUNNING -> terminated: the search stops and the worker emits its (partial) final result;
* RUNNING -> finished: final result; partial results every ``reportDuringSearchEvery`` seconds.

Tree reuse: each worker keeps its last search; when a new task's position extends that search's
root by moves inside the tree (same rules and evaluation settings), the subtree is kept.
"""

from __future__ import annotations

import ctypes
import gc
import heapq
import itertools
import logging
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from agent.backends.base import NeuralNet
from agent.engines.base import AnalysisQuery, Emit, Engine
from agent.errors import AgentError, EngineError
from agent.game.state import GameState
from agent.search.evaluator import NNEvaluator
from agent.search.mcts import Search
from agent.search.node import Node
from agent.search.params import SearchParams
from agent.search.position import COLOR, SearchState

logger = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, TERMINATED = "queued", "running", "done", "terminated"


def _trim_heap() -> None:
    """Return freed heap pages to the system (glibc ``malloc_trim``); a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, Android's bionic): nothing to trim
        return


@dataclass
class Task:
    query: AnalysisQuery
    turn: int
    state: GameState
    emit: Emit
    priority: int
    status: str = QUEUED
    search: Search | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    submitted: float = field(default_factory=time.monotonic)

    @property
    def id(self) -> str:
        return self.query.id


class NativeEngine(Engine):
    """Our MCTS engine over ``net``, any ``NeuralNet`` (its ``postprocess_params`` feed the
    shared post-processing)."""

    def __init__(
        self,
        net: NeuralNet,
        *,
        default_params: SearchParams | None = None,
        num_analysis_threads: int = 1,
        max_batch_size: int = 8,
        cache_size: int = 1 << 16,
        randomize: bool = True,
        seed: int | None = None,
        pass_alive_suicide: bool = False,
        model_name: str | None = None,
        tree_reuse: bool = True,
    ) -> None:
        self.net = net
        self._default_params = default_params or SearchParams()
        self.evaluator = NNEvaluator(
            net,
            net.postprocess_params,
            max_batch_size=max_batch_size,
            cache_size=cache_size,
            randomize=randomize,
            seed=seed,
            buffer=net.info.board_x,
            pass_alive_suicide=pass_alive_suicide,
        ).start()
        self.model_name = model_name or net.info.name
        self.max_batch_size = max_batch_size
        self.tree_reuse = tree_reuse
        self._seed = itertools.count(seed or int(time.time_ns() & 0xFFFFFFFF))
        self._heap: list[tuple[int, int, Task]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._open: list[Task] = []
        self._closing = False
        self._counters = {"queries": 0, "turns": 0, "finished": 0, "terminated": 0, "failed": 0, "visits": 0}
        self._search_seconds = 0.0
        self._latency_sum = 0.0
        self._kept: list[Search | None] = [None] * max(1, num_analysis_threads)  # per worker
        self._workers = [
            threading.Thread(target=self._worker, args=(i,), name=f"analysis-{i}", daemon=True)
            for i in range(max(1, num_analysis_threads))
        ]
        for t in self._workers:
            t.start()

    # ------------------------------------------------------------------ Engine API
    @property
    def default_params(self) -> SearchParams:
        return self._default_params

    def submit(self, query: AnalysisQuery, emit: Emit) -> None:
        with self._cv:
            if self._closing:
                raise EngineError("engine is shutting down")
            self._counters["queries"] += 1
            for turn, state in query.turns:
                prio = int(query.request.priorities.get(turn, 0))
                task = Task(query, turn, state, emit, prio)
                self._open.append(task)
                heapq.heappush(self._heap, (-prio, next(self._seq), task))
                self._counters["turns"] += 1
            self._cv.notify_all()

    def terminate(self, query_id: str, turn_numbers: list[int] | None = None) -> None:
        self._terminate(lambda t: t.id == query_id and (turn_numbers is None or t.turn in turn_numbers))

    def terminate_all(self, turn_numbers: list[int] | None = None) -> None:
        self._terminate(lambda t: turn_numbers is None or t.turn in turn_numbers)

    def clear_cache(self) -> None:
        """Drop the NN cache and the trees kept for reuse (as KataGo's ``clear_cache`` does), and
        hand the freed heap back to the system."""
        with self._cv:
            self._kept = [None] * len(self._kept)
        self.evaluator.clear_cache()
        gc.collect()
        _trim_heap()

    def describe(self) -> dict[str, Any]:
        info = self.net.info
        return {
            "engine": "native",
            "runtime": info.runtime,
            "models": [
                {
                    "name": self.model_name,
                    "internalName": info.name,
                    "maxBatchSize": self.max_batch_size,
                    "usesHumanSLProfile": False,
                    "version": info.model_version,
                    "usingFP16": info.precision == "fp16",
                }
            ],
        }

    def stats(self) -> dict[str, Any]:
        with self._cv:
            out: dict[str, Any] = dict(self._counters)
            out["queue_depth"] = sum(1 for t in self._open if t.status == QUEUED)
            out["running"] = sum(1 for t in self._open if t.status == RUNNING)
        secs = self._search_seconds
        out["visits_per_s"] = round(out["visits"] / secs, 2) if secs > 0 else 0.0
        ev = self.evaluator.stats()
        out.update(ev)
        out["evals_per_s"] = round(ev["nn_rows"] / ev["nn_seconds"], 2) if ev["nn_seconds"] > 0 else 0.0
        done = out["finished"] + out["terminated"]
        out["avg_latency_s"] = round(self._latency_sum / done, 4) if done else 0.0
        return out

    def close(self, timeout: float = 10.0) -> None:
        """Finish queued work within ``timeout`` seconds, then terminate what is left."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._workers):
            self.terminate_all()
            for t in self._workers:
                t.join(5.0)
        self.evaluator.close()

    # ------------------------------------------------------------------- internals
    def _terminate(self, match: Any) -> None:
        to_report: list[Task] = []
        with self._cv:
            for task in list(self._open):
                if not match(task):
                    continue
                with task.lock:
                    if task.status == QUEUED:
                        task.status = TERMINATED
                        to_report.append(task)
                    elif task.status == RUNNING and task.search is not None:
                        task.search.stop_event.set()
                        task.status = TERMINATED
                    elif task.status == RUNNING:
                        task.status = TERMINATED
            for task in to_report:
                self._open.remove(task)
                self._counters["terminated"] += 1
        for task in to_report:
            task.emit({"id": task.id, "turnNumber": task.turn, "isDuringSearch": False, "noResults": True})

    def _next_task(self) -> Task | None:
        with self._cv:
            while True:
                while self._heap:
                    _, _, task = heapq.heappop(self._heap)
                    with task.lock:
                        if task.status == QUEUED:
                            task.status = RUNNING
                            return task
                if self._closing:
                    return None
                self._cv.wait()

    def _worker(self, index: int) -> None:
        while True:
            task = self._next_task()
            if task is None:
                return
            with self._cv:  # the tree kept for reuse lives in _kept, where clear_cache can drop it
                last, self._kept[index] = self._kept[index], None
            try:
                kept = self._run(task, last)
                last = None
                with self._cv:
                    self._kept[index] = kept
                kept = None  # only _kept holds the tree (clear_cache drops it), not this frame
            except Exception as exc:
                logger.exception("analysis of %s turn %d failed", task.id, task.turn)
                with self._cv:
                    self._counters["failed"] += 1
                msg = str(exc) if isinstance(exc, AgentError) else f"internal error: {exc}"
                task.emit(
                    {
                        "id": task.id,
                        "turnNumber": task.turn,
                        "isDuringSearch": False,
                        "noResults": True,
                        "error": msg,
                    }
                )
                last = None
            finally:
                with self._cv:
                    if task in self._open:
                        self._open.remove(task)
                    self._latency_sum += time.monotonic() - task.submitted
                    task.search = None  # the tree lives on only in _kept (clear_cache drops it)
                task = None  # nor this frame while it waits for the next task

    def _make_search(self, task: Task, last: Search | None) -> Search:
        r = task.query.request
        params = r.params
        avoid: dict[int, dict[int, int]] = {}
        root_state = SearchState(task.state)
        for color, table in r.avoid.items():
            avoid[COLOR[color]] = {root_state.index_of_xy(xy): d for xy, d in table.items()}
        track_own = r.include_ownership or r.include_ownership_stdev
        track_moves = r.include_moves_ownership or r.include_moves_ownership_stdev
        search = Search(
            self.evaluator,
            params,
            root_state,
            avoid=avoid,
            track_ownership=track_own or track_moves,
            track_moves_ownership=track_moves,
            seed=next(self._seed),
        )
        if self.tree_reuse and last is not None and not avoid and not track_own and not track_moves:
            reused = _find_subtree(last, task.state, params)
            if reused is not None:
                search.adopt_root(reused)
        return search

    def _run(self, task: Task, last: Search | None) -> Search | None:
        search = self._make_search(task, last)
        with task.lock:
            task.search = search
            terminated_early = task.status == TERMINATED
        if terminated_early:
            search.stop_event.set()
        r = task.query.request

        def report(s: Search) -> None:
            resp = task.query.render(s, task.turn, True)
            if resp is not None:
                task.emit(resp)

        if not terminated_early:
            search.run(report if r.report_every is not None else None, r.report_every, r.first_report_after)
        final = task.query.render(search, task.turn, False) if search.root.weight > 0 else None
        with self._cv:
            self._search_seconds += search.elapsed
            self._counters["visits"] += search.playouts
            if task.status == TERMINATED:
                self._counters["terminated"] += 1
            else:
                self._counters["finished"] += 1
        with task.lock:
            task.status = DONE if task.status == RUNNING else task.status
        if final is None:
            task.emit({"id": task.id, "turnNumber": task.turn, "isDuringSearch": False, "noResults": True})
            return None
        task.emit(final)
        return search


def _find_subtree(last: Search, state: GameState, params: SearchParams) -> Node | None:
    """The node of ``last``'s tree for ``state`` when ``state`` extends ``last``'s root position
    by moves (same rules, board, evaluation settings); None otherwise."""
    old = last.root.state.gs
    if last.params != replace(
        params,
        max_visits=last.params.max_visits,
        max_time=last.params.max_time,
        max_playouts=last.params.max_playouts,
    ):
        return None
    if (
        old.rules != state.rules
        or old.board.x_size != state.board.x_size
        or old.board.y_size != state.board.y_size
    ):
        return None
    if params.ignore_pre_root_history is False:
        return None
    n_old, n_new = len(old.moves), len(state.moves)
    if (
        n_new < n_old
        or state.moves[:n_old] != old.moves
        or old.initial_board.hash != state.initial_board.hash
    ):
        return None
    node = last.root
    for loc, _pla in state.moves[n_old:]:
        if node.deferred:
            last.expand_deferred_node(node)
        if not node.expanded:
            return None
        st = node.state
        stride = st.x_size + 1
        idx = st.pass_index if loc == 1 else (loc // stride - 1) * st.x_size + (loc % stride - 1)
        k = node.child_index(idx)
        if k < 0 or node.children[k] is None:
            return None
        child = node.children[k]
        assert child is not None
        node = child
    if node.deferred:
        last.expand_subtree(node)
    if node is last.root or not node.expanded or node.terminal is not None:
        return None
    if node.state.gs.situation_hash() != state.situation_hash():
        return None
    return node
