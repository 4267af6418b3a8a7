"""Speculation with one search thread (``agent.search.speculate``): the same search, sooner."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from search_support import POST, query

from agent.backends.base import NNInputs, NNOutputs
from agent.backends.fake import FakeNet
from agent.protocol.query import parse_query
from agent.protocol.replay import build_turns
from agent.search.evaluator import NNEvaluator
from agent.search.mcts import Search
from agent.search.params import SearchParams
from agent.search.position import SearchState
from agent.search.speculate import Speculator

# a helper-mode prediction not done within this long after its wake-up is a hang, not slowness
HELPER_TIMEOUT_S = 30.0


def _search_moves(s: Search) -> list[tuple[int, int, float]]:
    root = s.root
    return [
        (int(m), int(v), round(float(w), 9))
        for m, v, w in zip(root.moves, root.e_visits, root.e_weight, strict=True)
        if v > 0
    ]


class _UncancellableNet(FakeNet):
    """A runtime that cannot abandon a run (like TFLite): the speculator's helper thread only
    prepares inputs, racing the network run. So that the race is always won, as on a quiet
    machine (on a loaded one a late prediction is dropped, by design), a run the helper was woken
    for (``woke``) returns only once the helper's prediction is done (``predicted``)."""

    def __init__(self, *, delay: float) -> None:
        super().__init__(delay=delay)
        self.woke = False
        self.predicted = threading.Event()

    def make_cancel(self) -> None:
        return None

    def evaluate(self, inputs: NNInputs) -> NNOutputs:
        out = super().evaluate(inputs)
        if self.woke:
            self.woke = False
            assert self.predicted.wait(HELPER_TIMEOUT_S), "the speculation helper never finished"
        return out


@pytest.fixture
def speculation_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Speculation as on a machine where it pays: more than one usable CPU (it is off under
    ``taskset`` with one) and predictions cheap next to the network (a median above a share of
    the measured evaluation time idles it: wall-clock times, which a loaded machine inflates).
    Helper-mode runs wait for the helper (``_UncancellableNet``)."""
    monkeypatch.setattr("agent.search.mcts.usable_cpus", lambda: 2)
    monkeypatch.setattr("agent.search.speculate.MAX_SHARE", math.inf)
    monkeypatch.setattr("agent.search.speculate.PIPELINED_MAX_SHARE", math.inf)
    release, timed = Speculator._release, Speculator._timed

    def release_helper(self: Speculator) -> None:
        if isinstance(self.net, _UncancellableNet):
            self.net.predicted.clear()
            self.net.woke = True
        release(self)

    def prediction_done(self: Speculator, t0: float) -> None:
        timed(self, t0)
        if isinstance(self.net, _UncancellableNet):
            self.net.predicted.set()

    monkeypatch.setattr(Speculator, "_release", release_helper)
    monkeypatch.setattr(Speculator, "_timed", prediction_done)


@pytest.mark.usefixtures("speculation_on")
@pytest.mark.parametrize("mode", ["network", "helper"])
def test_mcts__speculation_prepares_leaves_without_changing_the_search(mode: str) -> None:
    """With one search thread the next leaf is predicted while the network runs: its inputs are
    prepared and, where the runtime can cancel a run ("network" mode), its evaluation started
    behind the current one. The search must be the same visit for visit (same seeds, random
    symmetries included) with and without it, and the predictions must actually be used."""
    moves = [["B", "E5"], ["W", "C3"], ["B", "G6"], ["W", "F3"]]
    net_type = FakeNet if mode == "network" else _UncancellableNet
    out = {}
    for speculate in (False, True):
        params = SearchParams(max_visits=100, speculate=speculate)
        ev = NNEvaluator(net_type(delay=0.02), POST, randomize=True, seed=11)
        req = parse_query(query(moves=moves), params)
        turns, _ = build_turns(req)
        s = Search(ev, req.params, SearchState(turns[-1][1]), track_ownership=True, seed=7)
        s.run()
        ev.close()
        out[speculate] = (s, _search_moves(s), ev.rows)
    off, on = out[False][0], out[True][0]
    assert off.speculated == (0, 0)
    prepared, used = on.speculated
    assert used >= 40 and prepared >= used  # FakeNet's 20 ms leave time for every leaf
    started, used_runs = on.speculated_runs
    if mode == "network":
        assert used_runs >= 40 and started >= used_runs
    else:
        assert started == used_runs == 0
    assert out[True][1] == out[False][1]
    assert on.root.visits == off.root.visits == 100
    assert out[True][2] == out[False][2]  # network runs the search used: the same count
    assert np.array_equal(on.root.own_sum, off.root.own_sum)
