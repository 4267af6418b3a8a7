"""Utility of a network evaluation, as KataGo's search scores it (White's perspective).

``utility = winLossUtilityFactor * (win - loss) + noResultUtilityForWhite * noResult
+ staticScoreUtilityFactor * E[sv(score; 0, 2.0)] + dynamicScoreUtilityFactor * E[sv(score; c, 0.75)]``

where ``sv(s; c, k) = 2/pi * atan((s - c) / (k * sqrt(area)))`` is KataGo's smooth score value
and the expectation is over a normal final score with the network's mean and stdev (computed
here with Gauss-Hermite quadrature instead of KataGo's lookup table). The dynamic centre ``c``
follows the root's expected score, shrunk toward 0 by ``dynamicScoreCenterZeroWeight``, so
the search keeps caring about points when the game is already decided.

Visit weights (KataGo's ``useUncertainty``): a visit whose network output predicts a large
short-term error counts less, ``weight = coeff / (u + coeff / maxWeight)`` with ``u`` the
utility-scaled short-term win/loss and score errors; nets without those heads weigh 1.
"""

from __future__ import annotations

import math

import numpy as np

from agent.search.params import SearchParams

_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(15)
_GH_W = _GH_W / _GH_W.sum()
_GH = tuple(zip(_GH_X.tolist(), _GH_W.tolist(), strict=True))
TWO_OVER_PI = 2.0 / math.pi
STATIC_SCALE = 2.0


def expected_score_value(mean: float, stdev: float, center: float, scale: float, sqrt_area: float) -> float:
    """E[2/pi * atan((S - center) / (scale * sqrt_area))] for S ~ N(mean, stdev²)."""
    k = scale * sqrt_area
    if stdev <= 1e-9:
        return TWO_OVER_PI * math.atan((mean - center) / k)
    atan = math.atan
    total = 0.0
    for x, w in _GH:  # 15 points: plain floats beat numpy's per-call cost at this size
        total += w * atan((mean + stdev * x - center) / k)
    return TWO_OVER_PI * total


def score_value_derivative(mean: float, center: float, scale: float, sqrt_area: float) -> float:
    k = scale * sqrt_area
    u = (mean - center) / k
    return TWO_OVER_PI / k / (1.0 + u * u)


class UtilityModel:
    """Utilities and weights for one search (board size and dynamic centre fixed per search)."""

    def __init__(self, params: SearchParams, area: int, dynamic_center: float = 0.0) -> None:
        self.p = params
        self.sqrt_area = math.sqrt(area)
        self.dynamic_center = dynamic_center

    @staticmethod
    def center_from_root(params: SearchParams, root_score_mean: float, area: int) -> float:
        """KataGo-style dynamic score centre: the root's expected score, shrunk toward 0 and capped."""
        c = root_score_mean * (1.0 - params.dynamic_score_center_zero_weight)
        cap = math.sqrt(area) * params.dynamic_score_center_scale
        return min(max(c, root_score_mean - cap), root_score_mean + cap)

    def score_utility(self, white_score_mean: float, score_stdev: float) -> float:
        p = self.p
        u = 0.0
        if p.static_score_utility_factor:
            u += p.static_score_utility_factor * expected_score_value(
                white_score_mean, score_stdev, 0.0, STATIC_SCALE, self.sqrt_area
            )
        if p.dynamic_score_utility_factor:
            u += p.dynamic_score_utility_factor * expected_score_value(
                white_score_mean,
                score_stdev,
                self.dynamic_center,
                p.dynamic_score_center_scale,
                self.sqrt_area,
            )
        return u

    def score_utility_diff(self, score_mean: float, score_mean_sq: float, delta: float) -> float:
        """Change of the score utility when ``delta`` points go to White (KataGo's
        ``getScoreUtilityDiff``, used for the root ending bonus)."""
        if delta == 0:
            return 0.0
        sd = math.sqrt(max(0.0, score_mean_sq - score_mean * score_mean))
        return self.score_utility(score_mean + delta, sd) - self.score_utility(score_mean, sd)

    def utility_radius(self) -> float:
        p = self.p
        return p.win_loss_utility_factor + p.static_score_utility_factor + p.dynamic_score_utility_factor

    def utility(
        self,
        white_win: float,
        white_loss: float,
        no_result: float,
        white_score_mean: float,
        score_stdev: float,
    ) -> float:
        p = self.p
        return (
            p.win_loss_utility_factor * (white_win - white_loss)
            + p.no_result_utility_for_white * no_result
            + self.score_utility(white_score_mean, score_stdev)
        )

    def terminal_utility(self, white_minus_black_score: float) -> float:
        """Utility of a finished game with a known final score (no uncertainty)."""
        p = self.p
        if white_minus_black_score > 0:
            wl = 1.0
        elif white_minus_black_score < 0:
            wl = -1.0
        else:
            wl = 2.0 * p.draw_equivalent_wins_for_white - 1.0
        return p.win_loss_utility_factor * wl + self.score_utility(white_minus_black_score, 0.0)

    def weight(self, white_score_mean: float, st_winloss_error: float, st_score_error: float) -> float:
        p = self.p
        if not p.use_uncertainty or st_winloss_error < 0 or st_score_error < 0:
            return 1.0
        deriv = p.static_score_utility_factor * score_value_derivative(
            white_score_mean, 0.0, STATIC_SCALE, self.sqrt_area
        ) + p.dynamic_score_utility_factor * score_value_derivative(
            white_score_mean, self.dynamic_center, p.dynamic_score_center_scale, self.sqrt_area
        )
        u = p.win_loss_utility_factor * st_winloss_error + deriv * st_score_error
        baseline = p.uncertainty_coeff / p.uncertainty_max_weight
        return p.uncertainty_coeff / (u + baseline)

    def utility_to_winrate_scale(self) -> float:
        """Utility units per unit of winrate (for LCB on the winrate scale)."""
        p = self.p
        return 2.0 * (
            p.win_loss_utility_factor + p.static_score_utility_factor + p.dynamic_score_utility_factor
        )
