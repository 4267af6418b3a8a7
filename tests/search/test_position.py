"""Positions as the search sees them (``agent.search.position.SearchState``)."""

from __future__ import annotations

from search_support import search_state

from agent.game.board import BLACK, WHITE
from agent.search.params import SearchParams


def test_search_state__policy_indices_and_gtp_names() -> None:
    st = search_state([])
    assert (st.x_size, st.y_size, st.pass_index) == (9, 9, 81)
    assert st.gtp(0) == "A9" and st.gtp(8) == "J9" and st.gtp(80) == "J1" and st.gtp(81) == "pass"
    assert st.index_of_xy((4, 4)) == 40 and st.gtp(40) == "E5"
    assert st.index_of_xy(None) == 81


def test_search_state__legal_mask_and_play() -> None:
    st = search_state([])
    assert st.legal_mask().sum() == 82 and st.pla == BLACK and not st.white_to_move
    child = st.play(40)
    assert child.depth == 1 and child.pla == WHITE and child.white_to_move
    mask = child.legal_mask()
    assert not mask[40] and mask.sum() == 81 and mask[81]
    assert st.legal_mask().sum() == 82  # the parent is unchanged


def test_search_state__final_score_is_area_plus_komi() -> None:
    assert search_state([]).final_white_score() == 7.5  # nobody owns an empty board
    # one black stone owns the whole board under area scoring
    assert search_state([["B", "E5"]]).final_white_score() == 7.5 - 81


def test_search_state__nn_key_follows_history_settings() -> None:
    st = search_state([["B", "E5"], ["W", "C3"]])
    keep = SearchParams(ignore_pre_root_history=False)
    drop = SearchParams(ignore_pre_root_history=True)
    assert st.nn_key(keep) != st.nn_key(drop)
    assert st.nn_key(keep) == search_state([["B", "E5"], ["W", "C3"]]).nn_key(keep)


def test_search_state__encode_shapes_and_side_to_move() -> None:
    spatial, global_, legal = search_state([["B", "E5"]]).encode(SearchParams(), buffer=9)
    assert spatial.shape == (22, 9, 9) and global_.shape == (19,)
    assert legal.shape == (82,) and legal.sum() == 81 and not legal[40]  # every point but E5, and pass
    assert spatial[0].sum() == 81  # the on-board plane
    assert spatial[1].sum() + spatial[2].sum() == 1  # one stone, of the player or the opponent
