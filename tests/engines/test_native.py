"""The native engine (``agent.engines.native``) behind the service: root restrictions, reports, priorities, tree reuse, shared batching."""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

import pytest
from search_support import Sink, engine, query

from agent.backends.base import NNInputs, NNOutputs
from agent.backends.fake import FakeNet
from agent.engines.native import NativeEngine
from agent.protocol.service import AnalysisService, analysis_query
from agent.search.params import SearchParams


def test_mcts__avoid_moves_are_never_searched_at_the_root() -> None:
    eng = engine()
    svc = AnalysisService(eng)
    sink = Sink()
    avoid = ["D4", "D5", "D6", "E4", "E6", "F4", "F5", "F6", "G7", "C7", "G3"]
    svc.handle_line(json.dumps(query(avoidMoves=[{"player": "B", "moves": avoid, "untilDepth": 1}])), sink)
    svc.close()
    final = next(r for r in sink.items if r.get("isDuringSearch") is False)
    assert not {m["move"] for m in final["moveInfos"]} & set(avoid)


def test_mcts__allow_moves_restricts_the_root() -> None:
    eng = engine()
    svc = AnalysisService(eng)
    sink = Sink()
    svc.handle_line(
        json.dumps(query(allowMoves=[{"player": "B", "moves": ["A1", "J9"], "untilDepth": 1}])), sink
    )
    svc.close()
    final = next(r for r in sink.items if r.get("isDuringSearch") is False)
    assert {m["move"] for m in final["moveInfos"]} <= {"A1", "J9"}
    assert final["rootInfo"]["visits"] == 30


def test_mcts__report_during_search_then_one_final() -> None:
    net = FakeNet(delay=0.002)
    eng = NativeEngine(net, default_params=SearchParams(max_visits=150), randomize=False)
    svc = AnalysisService(eng)
    sink = Sink()
    svc.handle_line(json.dumps(query(reportDuringSearchEvery=0.05)), sink)
    svc.close()
    during = [r for r in sink.items if r.get("isDuringSearch") is True]
    finals = [r for r in sink.items if r.get("isDuringSearch") is False]
    assert len(finals) == 1 and finals[0] is sink.items[-1]
    assert during and all(r["rootInfo"]["visits"] <= finals[0]["rootInfo"]["visits"] for r in during)


class _GatedNet(FakeNet):
    """Holds every evaluation until ``gate`` is set; ``entered`` is set by the first one."""

    def __init__(self) -> None:
        super().__init__(delay=0.003)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def evaluate(self, inputs: NNInputs) -> NNOutputs:
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return super().evaluate(inputs)


def test_mcts__priorities_run_higher_first() -> None:
    """Queries waiting for the analysis thread run by priority. The first one is held in its
    root evaluation until the others wait behind it, so that it is surely running (not
    competing with them) and not done yet, however fast or slow the machine."""
    net = _GatedNet()
    eng = NativeEngine(net, default_params=SearchParams(max_visits=20), randomize=False)
    svc = AnalysisService(eng)
    order: list[str] = []

    def sink(r: dict[str, Any]) -> None:
        if r.get("isDuringSearch") is False:
            order.append(r["id"])

    svc.handle_line(json.dumps(query(id="first")), sink)
    assert net.entered.wait(30)  # "first" is running
    svc.handle_line(json.dumps(query(id="low", priority=-5)), sink)
    svc.handle_line(json.dumps(query(id="high", priority=10)), sink)
    svc.handle_line(json.dumps(query(id="mid")), sink)
    net.gate.set()
    svc.close()
    assert order == ["first", "high", "mid", "low"]


def test_mcts__tree_reuse_when_the_next_query_extends_the_last() -> None:
    eng = engine(params=SearchParams(max_visits=80))
    svc = AnalysisService(eng)
    sink = Sink()
    svc.handle_line(json.dumps(query(id="a")), sink)
    while not [r for r in sink.items if r.get("id") == "a"]:
        time.sleep(0.01)
    best = sink.items[0]["moveInfos"][0]["move"]
    svc.handle_line(json.dumps(query(id="b", moves=[["B", "E5"], ["W", "C3"], ["B", best]])), sink)
    svc.close()
    stats = eng.stats()
    assert stats["finished"] == 2
    assert stats["visits"] < 160  # the second search started from the first one's subtree


def test_mcts__tree_reuse_of_a_leaf_never_walked_through() -> None:
    """Without speculation a leaf visited once is left unexpanded (its expansion waits for a
    playout through it); the next query that plays its move still starts from it."""
    eng = engine(params=SearchParams(max_visits=80, speculate=False))
    svc = AnalysisService(eng)
    sink = Sink()
    svc.handle_line(json.dumps(query(id="a", includePVVisits=True)), sink)
    while not [r for r in sink.items if r.get("id") == "a"]:
        time.sleep(0.01)
    best = sink.items[0]["moveInfos"][0]
    assert best["pvVisits"][-1] == 1  # the principal variation ends at a leaf visited once
    pv = [["B" if i % 2 == 0 else "W", m] for i, m in enumerate(best["pv"])]
    svc.handle_line(json.dumps(query(id="b", moves=[["B", "E5"], ["W", "C3"], *pv])), sink)
    svc.close()
    stats = eng.stats()
    b = [r for r in sink.items if r.get("id") == "b"][-1]
    assert stats["finished"] == 2 and b["rootInfo"]["visits"] == 80
    assert stats["visits"] == 80 + 79  # the second search kept the leaf's one visit


def test_mcts__concurrent_one_thread_searches_still_batch_through_the_evaluator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Network-mode speculation is for a lone search: with two analysis threads (one search
    thread each) the searches' leaves share batches in the evaluator instead of each search
    running its own network thread.

    Made independent of the machine's speed and load: speculation is on as where it pays (more
    than one usable CPU, predictions cheap next to the network), both searches register with the
    evaluator before either plays out (a barrier), and the evaluator waits for the second
    search's leaf as long as it takes (its own wait, a fraction of a measured evaluation, and its
    judgement of whether waiting pays are wall-clock heuristics a loaded machine defeats)."""
    monkeypatch.setattr("agent.search.mcts.usable_cpus", lambda: 2)
    monkeypatch.setattr("agent.search.speculate.PIPELINED_MAX_SHARE", math.inf)
    params = SearchParams(max_visits=60)
    eng = NativeEngine(
        FakeNet(delay=0.01),
        default_params=params,
        randomize=False,
        seed=5,
        num_analysis_threads=2,
        max_batch_size=2,
    )
    ev = eng.evaluator
    both_searching = threading.Barrier(2, timeout=30)
    add_submitters = ev.add_submitters

    def add_submitters_together(n: int) -> None:
        add_submitters(n)
        if n > 0:
            both_searching.wait()  # the other search's playouts start too

    monkeypatch.setattr(ev, "add_submitters", add_submitters_together)
    monkeypatch.setattr(ev, "_batching_pays", lambda size: True)
    monkeypatch.setattr(ev, "_fill_wait", lambda: 30.0)  # cut short once a search ends
    sink = Sink()
    try:
        for qid, extra in (("a", "D4"), ("b", "F6")):
            eng.submit(
                analysis_query(
                    query(id=qid, moves=[["B", "E5"], ["W", "C3"], ["B", extra]], maxVisits=60), params
                ),
                sink,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len([r for r in sink.items if not r.get("isDuringSearch")]) < 2:
            time.sleep(0.05)
        stats = ev.stats()
    finally:
        eng.close()
    finals = {r["id"]: r for r in sink.items if not r.get("isDuringSearch")}
    assert set(finals) == {"a", "b"} and all(r["rootInfo"]["visits"] >= 60 for r in finals.values())
    assert stats["nn_avg_batch"] > 1.3  # most of the two searches' leaves were evaluated in pairs
