"""How the search scores an evaluation (``agent.search.utility``), in KataGo's units."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from agent.search.params import SearchParams
from agent.search.utility import UtilityModel, expected_score_value, score_value_derivative

P = SearchParams()  # winLoss 1.0, static score 0.1, dynamic score 0.3 (KataGo's defaults)


def test_expected_score_value__certain_score_is_the_plain_atan() -> None:
    # mean = scale * sqrt(area): atan(1) = pi/4, so 2/pi * pi/4 = 0.5
    assert expected_score_value(18.0, 0.0, 0.0, 2.0, 9.0) == pytest.approx(0.5)
    assert expected_score_value(0.0, 0.0, 0.0, 2.0, 9.0) == 0.0
    assert expected_score_value(-18.0, 0.0, 0.0, 2.0, 9.0) == pytest.approx(-0.5)


def test_expected_score_value__spread_pulls_toward_zero_symmetrically() -> None:
    assert expected_score_value(0.0, 10.0, 0.0, 2.0, 9.0) == pytest.approx(0.0, abs=1e-12)
    sure, spread = (
        expected_score_value(18.0, 0.0, 0.0, 2.0, 9.0),
        expected_score_value(18.0, 20.0, 0.0, 2.0, 9.0),
    )
    assert 0.3 < spread < sure  # atan is concave above its centre: uncertainty lowers the value


def test_score_value_derivative__is_the_slope_of_the_value() -> None:
    h = 1e-5
    numeric = (
        expected_score_value(5.0 + h, 0, 1.0, 0.75, 9) - expected_score_value(5.0 - h, 0, 1.0, 0.75, 9)
    ) / (2 * h)
    assert score_value_derivative(5.0, 1.0, 0.75, 9) == pytest.approx(numeric, rel=1e-6)


def test_utility__win_loss_and_score_terms_add_up() -> None:
    model = UtilityModel(P, area=81)
    # a sure White win by 18 points: 1.0 * 1 + 0.1 * sv(18; 0, 2) + 0.3 * sv(18; 0, 0.75)
    expected = 1.0 + 0.1 * 0.5 + 0.3 * (2 / math.pi) * math.atan(18 / (0.75 * 9))
    assert model.utility(1.0, 0.0, 0.0, 18.0, 0.0) == pytest.approx(expected)
    assert model.utility(0.0, 1.0, 0.0, -18.0, 0.0) == pytest.approx(-expected)


def test_terminal_utility__a_draw_is_worth_draw_equivalent_wins() -> None:
    model = UtilityModel(P, area=81)
    assert model.terminal_utility(0.0) == pytest.approx(0.0)  # 2 * 0.5 - 1
    white_draws = UtilityModel(replace(P, draw_equivalent_wins_for_white=1.0), area=81)
    assert white_draws.terminal_utility(0.0) == pytest.approx(1.0)
    assert model.terminal_utility(0.5) > 1.0 and model.terminal_utility(-0.5) < -1.0


def test_center_from_root__shrinks_toward_zero_and_is_capped() -> None:
    assert UtilityModel.center_from_root(P, 10.0, 81) == pytest.approx(8.0)  # 10 * (1 - 0.2)
    # a huge lead: the centre stays within sqrt(area) * 0.75 of it
    assert UtilityModel.center_from_root(P, 100.0, 81) == pytest.approx(100.0 - 9 * 0.75)


def test_radius_and_winrate_scale() -> None:
    model = UtilityModel(P, area=361)
    assert model.utility_radius() == pytest.approx(1.4)
    assert model.utility_to_winrate_scale() == pytest.approx(2.8)


def test_weight__uncertain_evaluations_count_less() -> None:
    model = UtilityModel(P, area=81)
    assert model.weight(0.0, -1.0, -1.0) == 1.0  # a net without the short-term error heads
    assert model.weight(0.0, 0.0, 0.0) == pytest.approx(8.0)  # no error: the maximum weight
    assert model.weight(0.0, 0.5, 5.0) < model.weight(0.0, 0.1, 1.0) < 8.0
    off = UtilityModel(replace(P, use_uncertainty=False), area=81)
    assert off.weight(0.0, 0.5, 5.0) == 1.0


def test_score_utility_diff__points_to_white_raise_white_utility() -> None:
    model = UtilityModel(P, area=81)
    assert model.score_utility_diff(2.0, 4.0, 0.0) == 0.0
    assert model.score_utility_diff(2.0, 4.0, 1.0) > 0.0 > model.score_utility_diff(2.0, 4.0, -1.0)
