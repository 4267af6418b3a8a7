"""Tree nodes (``agent.search.node``): weighted statistics backed up from the leaves."""

from __future__ import annotations

import numpy as np
import pytest
from search_support import search_state

from agent.search.node import LeafValue, Node


def _leaf(
    utility: float, wl: float, score: float, weight: float = 1.0, own: float | None = None
) -> LeafValue:
    ownership = None if own is None else np.full(81, own)
    return LeafValue(utility, wl, 0.0, score, score * score, score, weight, ownership)


def test_node__weighted_averages_of_the_backed_up_values() -> None:
    node = Node(search_state([]))
    assert node.sign == -1.0  # Black to move: the sums are White's view, the mover's is negated
    node.add(_leaf(0.5, 0.4, 2.0, weight=1.0))
    node.add(_leaf(-0.1, 0.1, 4.0, weight=3.0))
    assert node.visits == 2 and node.weight == 4.0 and node.weight_sq == 10.0
    assert node.utility == pytest.approx((0.5 - 0.3) / 4)
    assert node.win_loss == pytest.approx((0.4 + 0.3) / 4)
    assert node.score_mean == pytest.approx(14.0 / 4) and node.lead == pytest.approx(3.5)
    assert node.score_stdev == pytest.approx(np.sqrt((4 + 48) / 4 - 3.5**2))
    assert node.ess() == pytest.approx(16 / 10)
    assert node.utility_variance() == pytest.approx((0.25 + 3 * 0.01) / 4 - 0.05**2)


def test_node__ownership_sums_only_when_tracked() -> None:
    tracked = Node(search_state([]), track_ownership=True)
    plain = Node(search_state([]))
    for node in (tracked, plain):
        node.add(_leaf(0.0, 0.0, 0.0, weight=2.0, own=0.5))
    assert tracked.own_sum is not None and tracked.own_sq is not None
    assert np.allclose(tracked.own_sum, 1.0) and np.allclose(tracked.own_sq, 0.5)
    assert plain.own_sum is None


def test_node__empty_node() -> None:
    node = Node(search_state([]))
    assert (node.visits, node.weight, node.utility, node.ess()) == (0, 0.0, 0.0, 0.0)
    assert not node.expanded and node.child_index(40) == -1
