"""MCTS behaviour over the deterministic fake network (fast)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from search_support import POST, make_search, query

from agent.backends.fake import FakeNet
from agent.protocol.query import parse_query
from agent.protocol.replay import build_turns
from agent.protocol.response import analysis_json
from agent.search.evaluator import NNEvaluator
from agent.search.mcts import Search
from agent.search.params import SearchParams
from agent.search.position import SearchState


def test_mcts__visits_reach_limit_and_edges_add_up() -> None:
    s = make_search()
    s.run()
    root = s.root
    assert root.visits == 40
    assert int(root.e_visits.sum()) == 39
    assert int(np.abs(root.e_virtual).sum()) == 0
    assert root.weight > root.e_weight.sum() > 0


@pytest.mark.parametrize("threads", [2, 4])
def test_mcts__search_threads_leave_no_virtual_loss(threads: int) -> None:
    ev = NNEvaluator(FakeNet(delay=0.001), POST, randomize=False, max_batch_size=threads).start()
    try:
        s = make_search(SearchParams(max_visits=60, num_threads=threads), ev)
        s.run()
    finally:
        ev.close()
    assert 60 <= s.root.visits <= 60 + threads
    stack = [s.root]
    while stack:
        n = stack.pop()
        assert int(np.abs(n.e_virtual).sum()) == 0
        assert not n.pending
        stack.extend(c for c in n.children if c is not None)
    assert ev.rows >= 30 and ev.batches <= ev.rows


def test_mcts__territory_pass_after_two_passes_is_terminal() -> None:
    moves = [["B", "E5"], ["W", "C3"], ["B", "pass"], ["W", "pass"]]
    s = make_search(SearchParams(max_visits=60), moves=moves, rules="japanese", komi=6.5)
    s.prepare_root()
    child = s._child(s.root, s.root.child_index(81))
    assert child.nn_terminal  # territory scoring: past the normal end, the node is never expanded
    s.run()
    res = analysis_json(s, perspective="BLACK", pv_len=5)
    assert res is not None
    pass_info = [m for m in res["moveInfos"] if m["move"] == "pass"]
    assert not pass_info or pass_info[0]["pv"] == ["pass"]


def test_mcts__conservative_pass_keeps_the_root_pass_child_alive() -> None:
    moves = [["B", "E5"], ["W", "C3"], ["B", "pass"], ["W", "pass"]]
    s = make_search(SearchParams(max_visits=60), moves=moves, rules="tromp-taylor", komi=7.5)
    s.prepare_root()
    child = s._child(s.root, s.root.child_index(81))
    assert child.terminal is None  # conservativePass: the root's pass does not end the game
    s2 = make_search(SearchParams(max_visits=60, conservative_pass=False), moves=moves, rules="tromp-taylor")
    s2.prepare_root()
    child2 = s2._child(s2.root, s2.root.child_index(81))
    assert child2.terminal is not None and child2.terminal.weight > 0


def test_mcts__root_symmetries_average_the_policy() -> None:
    ev = NNEvaluator(FakeNet(), POST, randomize=False)
    s = make_search(SearchParams(max_visits=1, root_num_symmetries_to_sample=8), ev)
    s.run()
    assert ev.rows == 8
    res = analysis_json(s, perspective="BLACK", include_policy=True)
    assert res is not None
    pol = np.array(res["policy"])
    assert abs(pol[pol >= 0].sum() - 1.0) < 1e-5


@pytest.mark.parametrize("threads", [1, 3])
def test_mcts__prefix_selection_matches_vectorised_selection(threads: int) -> None:
    """``_select_prefix`` (plain Python over the tried children) must pick what the vectorised
    PUCT picks, virtual losses included: below the root always, at the root when its priors are
    sorted (``root_prefix_ok``), with wide root noise and with the root's ending bonus."""
    checked = mismatched = root_checked = bonus_checked = 0

    class Checked(Search):
        def _select(self, node: Any, rng: Any = None) -> int:
            nonlocal checked, mismatched, root_checked, bonus_checked
            if rng is not None:  # the speculator's peek (its own copy of the generator)
                return super()._select(node, rng)
            state = self.np_rng.bit_generator.state  # wide root noise draws the same numbers
            k = super()._select(node)
            after = self.np_rng.bit_generator.state
            self.np_rng.bit_generator.state = state
            checked += 1
            root_checked += node is self.root
            if node is self.root and self.root_prefix_ok and self.root_has_bonus:
                bonus_checked += bool(self._bonus_utility(node).any())  # a bonus moved a value
            mismatched += k != self._select_full(node)
            assert self.np_rng.bit_generator.state == after
            return k

    ev = NNEvaluator(FakeNet(), POST, randomize=False, max_batch_size=threads).start()
    try:
        request = parse_query(query(moves=[["B", "E5"], ["W", "C3"], ["B", "G7"]]), SearchParams())
        turns, _ = build_turns(request)
        s = Checked(ev, SearchParams(max_visits=300, num_threads=threads), SearchState(turns[-1][1]), seed=3)
        s.run()
        assert s.root_copies and not s.root_prefix_ok  # symmetric: merged orbits unsort the priors
        request = parse_query(query(moves=[["B", "E5"], ["W", "C3"], ["B", "G6"]]), SearchParams())
        turns, _ = build_turns(request)
        s = Checked(ev, SearchParams(max_visits=300, num_threads=threads), SearchState(turns[-1][1]), seed=3)
        s.run()
        # territory scoring: passing at the root costs a third of a point (the ending bonus); a
        # small board so that the pass gets visited
        request = parse_query(
            query(moves=[["B", "B2"]], rules="japanese", boardXSize=3, boardYSize=3), SearchParams()
        )
        turns, _ = build_turns(request)
        bonus = Checked(
            ev,
            SearchParams(max_visits=300, num_threads=threads, root_ending_bonus_points=0.5),
            SearchState(turns[-1][1]),
            seed=3,
        )
        bonus.run()
    finally:
        ev.close()
    assert s.params.wide_root_noise > 0 and s.root_prefix_ok
    assert bonus.root_has_bonus and bonus.root_prefix_ok and bonus_checked > 100
    assert root_checked > 500 and checked > root_checked + 400 and mismatched == 0


def _nodes(root: Any) -> list[Any]:
    out, stack = [], [root]
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(c for c in n.children if c is not None)
    return out


def test_mcts__leaves_are_expanded_when_first_walked_through() -> None:
    """A leaf's expansion (edges sorted by prior) waits until a playout walks through it: leaves
    never walked through are left evaluated, backed up and unexpanded, and ``expand_subtree``
    (before tree reuse) expands them as the search would have. (With speculation, as on several
    CPUs, its helper expands them while the network runs.)"""
    s = make_search(SearchParams(max_visits=40, speculate=False))
    s.run()
    nodes = _nodes(s.root)
    waiting = [n for n in nodes if n.deferred]
    assert waiting and len(waiting) < len(nodes)
    for n in waiting:
        assert not n.expanded and n.ev is not None and n.visits >= 1 and len(n.children) == 0
    for n in nodes:
        if any(c is not None for c in n.children):
            assert n.expanded and not n.deferred  # walked through: expanded on the way
    s.expand_subtree(s.root)
    assert not any(n.deferred for n in _nodes(s.root))
    for n in waiting:
        assert n.expanded and n.n_moves > 0 and n.tried == 0
        assert np.all(np.diff(n.priors) <= 0) and n.priors[0] > 0  # sorted by prior, as _expand does
        assert int(n.e_visits.sum()) == 0 and n.visits >= 1
