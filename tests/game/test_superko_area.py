"""Superko (positional vs situational), pass-alive areas (Benson), seki, pass/history features."""

from __future__ import annotations

import numpy as np
import pytest

from agent.game.area import calculate_area, independent_life_area
from agent.game.board import BLACK, EMPTY, WHITE
from agent.game.features import encode_v7
from agent.game.position import position_from_query, state_from_ascii

# Found by a random search on a 3x2 board; replayed here move by move.
CYCLE = ["A2", "B1", "A1", "B2", "pass", "C2", "A2", "C1", "A1"]


def _cycle_state(ko: str):  # type: ignore[no-untyped-def]
    moves = [["B" if i % 2 == 0 else "W", m] for i, m in enumerate(CYCLE)]
    return position_from_query(moves, rules={"ko": ko, "suicide": False}, board_x=3, board_y=2)


def test_superko__positional_bans_repeat_with_other_side_to_move() -> None:
    s = _cycle_state("POSITIONAL")
    b1 = s.board.geo.from_gtp("B1")
    assert s.board.ko_loc != b1  # not a simple-ko ban
    assert s.superko_banned() == frozenset({b1})
    assert not s.is_legal(b1)
    spatial, glob = encode_v7(s, nn_x=3, nn_y=2)
    assert spatial[6, 1, 1] == 1.0
    assert (glob[6], glob[7]) == (1.0, 0.5)


def test_superko__situational_allows_it() -> None:
    s = _cycle_state("SITUATIONAL")
    b1 = s.board.geo.from_gtp("B1")
    assert s.superko_banned() == frozenset()
    assert s.is_legal(b1)
    _, glob = encode_v7(s, nn_x=3, nn_y=2)
    assert (glob[6], glob[7]) == (1.0, -0.5)


def test_superko__simple_ko_rules_never_ban_beyond_ko_point() -> None:
    s = _cycle_state("SIMPLE")
    assert s.superko_banned() == frozenset()


TWO_EYES = """
.X.X
XXXX
....
.O..
"""
ONE_EYE = """
..XX
XXXX
....
.O..
"""


def test_area__pass_alive_group_with_territory() -> None:
    b = state_from_ascii(TWO_EYES, BLACK).board
    area = calculate_area(b, False, False, False, False)
    marked = sorted(b.geo.to_gtp(p) for p in b.geo.all_locs() if area[p] == BLACK)
    assert marked == sorted(["B4", "D4", "A3", "B3", "C3", "D3", "A4", "C4"])  # stones + both eyes
    assert all(area[p] == EMPTY for p in b.geo.all_locs() if b.geo.xy(p)[1] >= 2)


def test_area__group_with_one_eye_is_not_pass_alive() -> None:
    b = state_from_ascii(ONE_EYE, BLACK).board
    area = calculate_area(b, False, False, False, False)
    assert all(v == EMPTY for v in area)


def test_area__features_mark_stones_eyes_and_non_pass_alive_stone() -> None:
    s = state_from_ascii(TWO_EYES, WHITE, "tromp-taylor")
    spatial, _ = encode_v7(s, nn_x=4, nn_y=4)
    # White to move: ch19 = Black's area (group + eyes), ch18 = the lone white stone
    assert spatial[19, :2].sum() == 8.0 and spatial[19, 2:].sum() == 0.0
    assert spatial[18].sum() == 1.0 and spatial[18, 3, 1] == 1.0


def test_area__single_stone_owns_whole_board_via_unsafe_big_territory() -> None:
    s = position_from_query([["B", "E5"]], rules="tromp-taylor", board_x=9, board_y=9)
    spatial, _ = encode_v7(s)
    assert spatial[19, :9, :9].sum() == 81.0 and spatial[18].sum() == 0.0
    assert spatial[19, 9:].sum() == 0.0 and spatial[19, :, 9:].sum() == 0.0


SEKI = """
X.O
X.O
"""


def test_area__seki_is_nobody_s_area_under_independent_life() -> None:
    s = state_from_ascii(SEKI, BLACK, "stone-scoring")
    b = s.board
    g = b.geo
    assert b.num_liberties(g.from_gtp("A1")) == 2 and b.num_liberties(g.from_gtp("C1")) == 2
    pure = calculate_area(b, False, False, False, False)
    assert all(v == EMPTY for v in pure)  # neither chain is pass-alive
    basic = calculate_area(b, True, True, True, False)
    assert basic[g.from_gtp("A1")] == BLACK and basic[g.from_gtp("B1")] == EMPTY  # dame
    life, white_minus_black = independent_life_area(b, False, False, False)
    assert all(v == EMPTY for v in life) and white_minus_black == 0
    spatial, glob = encode_v7(s, nn_x=3, nn_y=2)
    assert spatial[18].sum() == 2.0 and spatial[19].sum() == 2.0  # keepStones: stones only
    assert (glob[10], glob[11]) == (1.0, 1.0)
    # filling a shared liberty is self-atari: the opponent then captures
    s.play(g.from_gtp("B2"))
    s.play(g.from_gtp("B1"))
    assert s.board.captured[BLACK] == 3


def test_history__chinese_pass_suppresses_history_but_tromp_taylor_keeps_it() -> None:
    moves = [["B", "Q16"], ["W", "D4"], ["B", "pass"]]
    cn = position_from_query(moves, rules="chinese")
    tt = position_from_query(moves, rules="tromp-taylor")
    jp = position_from_query(moves, rules="japanese")
    _, g_cn = encode_v7(cn)
    s_cn, _ = encode_v7(cn)
    _, g_tt = encode_v7(tt)
    _, g_jp = encode_v7(jp)
    assert g_cn[0] == 0.0 and g_cn[14] == 0.0 and s_cn[9:14].sum() == 0.0
    assert g_tt[0] == 1.0 and g_tt[14] == 1.0
    assert g_jp[0] == 1.0 and g_jp[14] == 1.0


def test_history__analysis_root_options() -> None:
    s = position_from_query([["B", "Q16"], ["W", "D4"], ["B", "pass"]], rules="tromp-taylor")
    spatial, glob = encode_v7(s, max_history=0, conservative_pass=True)
    assert spatial[9:14].sum() == 0.0 and glob[0:5].sum() == 0.0 and glob[14] == 0.0
    np.testing.assert_array_equal(spatial[15], spatial[14])


@pytest.mark.parametrize(
    ("pla_moves", "g5", "g18"),
    [(1, 0.375, 0.5), (0, -0.375, -0.5)],
)
def test_komi__wave_and_scale_on_19x19(pla_moves: int, g5: float, g18: float) -> None:
    moves = [["B", "Q16"]][:pla_moves]
    s = position_from_query(moves, rules="tromp-taylor", komi=7.5)
    _, glob = encode_v7(s)
    assert glob[5] == pytest.approx(g5) and glob[18] == pytest.approx(g18)


def test_komi__territory_chill_and_button() -> None:
    jp = position_from_query([["B", "Q16"]], rules="japanese", komi=6.5)
    assert jp.self_komi(WHITE) == 7.5
    ab = position_from_query([["B", "Q16"], ["W", "pass"]], rules="aga-button")
    _, glob = encode_v7(ab)
    assert ab.self_komi(WHITE) == 7.5 and glob[17] == 0.0
    ab0 = position_from_query([["B", "Q16"]], rules="aga-button")
    assert encode_v7(ab0)[1][17] == 1.0


def test_history__finished_game_sees_only_the_last_move() -> None:
    s = position_from_query([["B", "Q16"], ["W", "D4"], ["B", "pass"], ["W", "pass"]], rules="tromp-taylor")
    assert s.is_game_finished and s.is_over
    spatial, glob = encode_v7(s)
    assert glob[0:5].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0] and spatial[9:14].sum() == 0.0
    assert glob[14] == 1.0
    jp = position_from_query([["B", "Q16"], ["W", "D4"], ["B", "pass"], ["W", "pass"]], rules="japanese")
    assert jp.is_past_normal_phase_end and not jp.is_game_finished
    assert encode_v7(jp)[1][0:5].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_history__colour_repetition_restarts_history() -> None:
    s = position_from_query([["B", "D4"], ["B", "Q16"]], rules="tromp-taylor")
    spatial, glob = encode_v7(s)
    assert spatial[9, 3, 15] == 1.0 and spatial[9].sum() == 1.0  # Q16 only
    assert spatial[10:14].sum() == 0.0 and glob[0:5].sum() == 0.0
    assert spatial[2, 15, 3] == 1.0  # D4 is still on the board (opponent stone for White)
