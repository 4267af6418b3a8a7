"""Which root move a search would play (``agent.search.results``): play selection values and LCBs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from search_support import make_search

from agent.search.params import SearchParams
from agent.search.results import play_selection_values, utility_lcb


def test_play_selection_values__the_most_weighted_move_keeps_its_weight() -> None:
    s = make_search(SearchParams(max_visits=80, use_lcb_for_selection=False))
    s.run()
    root = s.root
    psv, lcbs, radii = play_selection_values(s)
    best = int(np.argmax(root.e_weight))
    assert psv[best] == pytest.approx(root.e_weight[best])
    # the others keep at most their weight, rounded up to whole visits as KataGo does
    assert np.all(psv <= np.ceil(root.e_weight) + 1e-9)
    assert np.all(psv[root.e_weight <= 0] == 0)
    visited = root.e_weight > 0
    assert np.all(radii[visited] > 0) and np.all(lcbs[~visited] == -1e9)


def test_play_selection_values__lcb_may_promote_a_move_but_never_lowers_one() -> None:
    s = make_search(SearchParams(max_visits=80))
    s.run()
    with_lcb, _, _ = play_selection_values(s)
    s.params = replace(s.params, use_lcb_for_selection=False)
    plain, _, _ = play_selection_values(s)
    assert np.all(with_lcb >= plain - 1e-9)


def test_utility_lcb__an_unvisited_child_has_the_widest_bound() -> None:
    s = make_search(SearchParams(max_visits=40))
    s.run()
    root = s.root
    big = s.util.utility_radius()
    k = int(np.argmax(root.e_visits))
    child = root.children[k]
    assert child is not None and child.visits > 0
    lcb, radius = utility_lcb(s, child)
    assert 0 < radius < 2 * big * s.params.lcb_stdevs
    assert lcb == pytest.approx(root.sign * child.utility - radius)
    unvisited = make_search(SearchParams(max_visits=1)).root  # a fresh node: nothing backed up
    assert utility_lcb(s, unvisited) == (-2 * big * s.params.lcb_stdevs, 2 * big * s.params.lcb_stdevs)
