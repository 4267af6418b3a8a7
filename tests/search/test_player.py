"""A fixed-visit player (``agent.search.player``), as the strength matches use it."""

from __future__ import annotations

from search_support import POST, state_after

from agent.backends.fake import FakeNet
from agent.search.player import SearchPlayer


def test_player__chooses_a_legal_move_with_the_visits_asked_and_is_deterministic() -> None:
    state = state_after([["B", "E5"], ["W", "C3"]])
    choices = []
    for _ in range(2):
        player = SearchPlayer(FakeNet(), POST, visits=12, seed=3)
        try:
            choices.append(player.choose(state))
        finally:
            player.close()
    first, again = choices
    assert first == again  # same seed, same network: the same move and values
    assert first.visits == 12
    assert first.loc in state.legal_moves(include_pass=True)
    assert 0.0 <= first.winrate <= 1.0
