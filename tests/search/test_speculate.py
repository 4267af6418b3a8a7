"""Speculation with one search thread (``agent.search.speculate``): the same search, sooner."""

from __future__ import annotations

import numpy as np
import pytest
from search_support import POST, query

from agent.backends.fake import FakeNet
from agent.protocol.query import parse_query
from agent.protocol.replay import build_turns
from agent.search.evaluator import NNEvaluator
from agent.search.mcts import Search
from agent.search.params import SearchParams
from agent.search.position import SearchState


def _search_moves(s: Search) -> list[tuple[int, int, float]]:
    root = s.root
    return [
        (int(m), int(v), round(float(w), 9))
        for m, v, w in zip(root.moves, root.e_visits, root.e_weight, strict=True)
        if v > 0
    ]


class _UncancellableNet(FakeNet):
    """A runtime that cannot abandon a run (like TFLite): the speculator only prepares inputs."""

    def make_cancel(self) -> None:
        return None


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
