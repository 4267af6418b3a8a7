"""The root ending bonus (``agent.search.ending``)."""

from __future__ import annotations

import numpy as np
import pytest
from search_support import make_search


def test_mcts__ending_bonus_discourages_pointless_moves_and_territory_passes() -> None:
    from agent.search.ending import ending_white_bonus

    st = make_search(moves=[]).root.state  # empty 9x9, Black to move, area scoring
    moves = np.array([0, 40, 81])
    white_owns_all = np.ones(81, dtype=np.float32)
    bonus = ending_white_bonus(st, moves, white_owns_all, 0.5)
    assert np.allclose(bonus, [0.5, 0.5, 0.0])  # Black playing in White's sure area gives White 0.5
    assert not ending_white_bonus(st, moves, np.zeros(81, dtype=np.float32), 0.5).any()
    jp = make_search(moves=[], rules="japanese", komi=6.5).root.state
    assert ending_white_bonus(jp, np.array([81]), np.zeros(81, dtype=np.float32), 0.5)[0] == pytest.approx(
        1 / 3
    )
