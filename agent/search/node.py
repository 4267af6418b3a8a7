"""Search-tree nodes: per-node statistics plus per-edge arrays for vectorised PUCT.

All sums are weighted and from **White's perspective** (KataGo stores search values that way
too); ``sign`` (+1 White to move, -1 Black) turns them into the mover's view. Each node keeps
numpy arrays over its children (edge visits, edge weight, weighted utility sum, virtual losses)
so that child selection is a handful of vector operations instead of a Python loop over up
to 362 moves. ``children[k]`` is created lazily the first time edge ``k`` is selected.

Ownership sums are only kept where they are reported: the root (tree-averaged ownership) and,
when ``includeMovesOwnership`` is asked, the root's children.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.network.postprocess import NetEval
from agent.search.position import SearchState


@dataclass(frozen=True)
class LeafValue:
    """What one playout backs up (White's perspective) with its weight."""

    utility: float
    win_loss: float
    no_result: float
    score_mean: float
    score_mean_sq: float
    lead: float
    weight: float
    ownership: np.ndarray | None


class Node:
    __slots__ = (
        "children",
        "deferred",
        "e_usum",
        "e_virtual",
        "e_visits",
        "e_weight",
        "ev",
        "expanded",
        "lead_sum",
        "moves",
        "nn_terminal",
        "nn_utility",
        "nr_sum",
        "own_sq",
        "own_sum",
        "pending",
        "priors",
        "raw_priors",
        "score_sq_sum",
        "score_sum",
        "sign",
        "state",
        "terminal",
        "tried",
        "u_sq",
        "u_sum",
        "visits",
        "weight",
        "weight_sq",
        "wl_sum",
    )

    def __init__(
        self, state: SearchState, *, terminal: LeafValue | None = None, track_ownership: bool = False
    ) -> None:
        self.state = state
        self.sign = 1.0 if state.white_to_move else -1.0
        self.ev: NetEval | None = None
        self.expanded = False
        self.pending = False
        self.deferred = False  # evaluated and backed up, expansion left for later (mcts)
        self.terminal = terminal
        # territory scoring past the normal end: KataGo keeps re-adding the node's own NN value
        self.nn_terminal = False
        self.moves = np.zeros(0, dtype=np.int64)
        self.priors = np.zeros(0, dtype=np.float64)
        self.raw_priors = np.zeros(0, dtype=np.float64)
        self.children: list[Node | None] = []
        self.e_visits = np.zeros(0, dtype=np.int64)
        self.e_weight = np.zeros(0, dtype=np.float64)
        self.e_usum = np.zeros(0, dtype=np.float64)
        self.e_virtual = np.zeros(0, dtype=np.int64)
        self.tried = 0  # 1 + the highest child index ever selected: later edges were never tried
        self.nn_utility = 0.0
        self.visits = 0
        self.weight = 0.0
        self.weight_sq = 0.0
        self.u_sum = 0.0
        self.u_sq = 0.0
        self.wl_sum = 0.0
        self.nr_sum = 0.0
        self.score_sum = 0.0
        self.score_sq_sum = 0.0
        self.lead_sum = 0.0
        n = state.x_size * state.y_size
        self.own_sum: np.ndarray | None = np.zeros(n, dtype=np.float64) if track_ownership else None
        self.own_sq: np.ndarray | None = np.zeros(n, dtype=np.float64) if track_ownership else None

    def expand(
        self, ev: NetEval, moves: np.ndarray, priors: np.ndarray, raw_priors: np.ndarray, nn_utility: float
    ) -> None:
        k = len(moves)
        self.ev = ev
        self.moves = moves
        self.priors = priors
        self.raw_priors = raw_priors
        self.children = [None] * k
        self.e_visits = np.zeros(k, dtype=np.int64)
        self.e_weight = np.zeros(k, dtype=np.float64)
        self.e_usum = np.zeros(k, dtype=np.float64)
        self.e_virtual = np.zeros(k, dtype=np.int64)
        self.tried = 0
        self.nn_utility = nn_utility
        self.expanded = True
        self.pending = False

    def add(self, v: LeafValue) -> None:
        w = v.weight
        self.visits += 1
        self.weight += w
        self.weight_sq += w * w
        self.u_sum += w * v.utility
        self.u_sq += w * v.utility * v.utility
        self.wl_sum += w * v.win_loss
        self.nr_sum += w * v.no_result
        self.score_sum += w * v.score_mean
        self.score_sq_sum += w * v.score_mean_sq
        self.lead_sum += w * v.lead
        if self.own_sum is not None and self.own_sq is not None and v.ownership is not None:
            self.own_sum += w * v.ownership
            self.own_sq += w * v.ownership * v.ownership

    # averages (White's perspective); only meaningful when weight > 0
    def avg(self, total: float) -> float:
        return total / self.weight if self.weight > 0 else 0.0

    @property
    def utility(self) -> float:
        return self.avg(self.u_sum)

    @property
    def win_loss(self) -> float:
        return self.avg(self.wl_sum)

    @property
    def score_mean(self) -> float:
        return self.avg(self.score_sum)

    @property
    def lead(self) -> float:
        return self.avg(self.lead_sum)

    @property
    def score_stdev(self) -> float:
        m = self.score_mean
        return float(np.sqrt(max(0.0, self.avg(self.score_sq_sum) - m * m)))

    def utility_variance(self) -> float:
        m = self.utility
        return max(0.0, self.avg(self.u_sq) - m * m)

    def ess(self) -> float:
        """Effective sample size of the weighted visits."""
        return self.weight * self.weight / self.weight_sq if self.weight_sq > 0 else 0.0

    def child_index(self, move: int) -> int:
        hits = np.nonzero(self.moves == move)[0]
        return int(hits[0]) if len(hits) else -1
