"""Search-tree nodes: per-node statistics plus per-edge arrays for PUCT selection.

All sums are weighted and from **White's perspective** (KataGo stores search values that way
too); ``sign`` (+1 White to move, -1 Black) turns them into the mover's view. ``children[k]`` is
created lazily the first time edge ``k`` is selected.

Edges are sorted by decreasing prior (``Search._expand``), and below the root only the children
tried so far plus the best untried one ever compete, so a node's edge arrays (edge visits,
weight, utility sum, virtual losses, priors) only cover a **prefix** of its moves: ``grow``
extends them as ``tried`` advances (to 8, 16, ... 64 edges, then all of them). The moves are kept
(``int16``) and the priors re-read from the node's network evaluation with their sum, so a
prior is recomputed bit for bit as the full ``float64`` array held it. The
prefix sizes are multiples of 8 up to 64 and the arrays are zero past ``tried``: numpy's
pairwise sums over them (``e_weight.sum()``) add the same numbers in the same order as over the
full arrays. The root keeps full arrays (wide root noise, symmetry pruning, results).

Ownership sums are only kept where they are reported: the root (tree-averaged ownership) and,
when ``includeMovesOwnership`` is asked, the root's children.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter

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

    def weighted(self) -> tuple[float, float, float, float, float, float, float, float, float]:
        """What ``Node.add`` adds to a node's sums: weight, weight², and weight times utility,
        utility², win/loss, no result, score mean, score mean², lead (computed once a playout,
        the same products ``add`` makes)."""
        w = self.weight
        wu = w * self.utility
        return (
            w,
            w * w,
            wu,
            wu * self.utility,
            w * self.win_loss,
            w * self.no_result,
            w * self.score_mean,
            w * self.score_mean_sq,
            w * self.lead,
        )


class _Mean:
    """A node's weighted average of one of its sums (``Node.avg``), read as an attribute."""

    __slots__ = ("total",)

    def __init__(self, total: Callable[[Node], float]) -> None:
        self.total = total

    def __get__(self, node: Node, owner: type[Node] | None = None) -> float:
        return node.avg(self.total(node))


_NO_MOVES = np.zeros(0, dtype=np.int16)
_NO_INTS = np.zeros(0, dtype=np.int64)
_NO_FLOATS = np.zeros(0, dtype=np.float64)
for _a in (_NO_MOVES, _NO_INTS, _NO_FLOATS):
    _a.flags.writeable = False
del _a
PREFIX_STEPS = (8, 16, 32, 64)  # edge-array sizes below the root before the full size
PREFIX_LIMIT = 128  # up to this many moves the arrays are full at once (numpy sums one block)


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
        "n_moves",
        "nn_terminal",
        "nn_utility",
        "nr_sum",
        "own_sq",
        "own_sum",
        "pending",
        "prefix",
        "prior_sum",
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
        self.moves: np.ndarray = _NO_MOVES
        self.n_moves = 0
        self.priors: np.ndarray = _NO_FLOATS
        self.raw_priors: np.ndarray = _NO_FLOATS
        self.prefix = False  # edge arrays cover a prefix of the moves (grown by ``grow``)
        self.prior_sum = 1.0
        self.children: list[Node | None] = []
        self.e_visits: np.ndarray = _NO_INTS
        self.e_weight: np.ndarray = _NO_FLOATS
        self.e_usum: np.ndarray = _NO_FLOATS
        self.e_virtual: np.ndarray = _NO_INTS
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
        self,
        ev: NetEval,
        moves: np.ndarray,
        priors: np.ndarray,
        raw_priors: np.ndarray,
        nn_utility: float,
        *,
        prior_sum: float | None = None,
    ) -> None:
        """Full edge arrays from ``priors``/``raw_priors``; or, with ``prior_sum`` (the moves'
        raw priors are ``ev.policy[moves]`` and ``priors = raw / prior_sum``), a prefix of them,
        grown on demand."""
        k = len(moves)
        self.ev = ev
        self.moves = moves.astype(np.int16)
        self.n_moves = k
        self.tried = 0
        self.nn_utility = nn_utility
        self.expanded = True
        self.pending = False
        if prior_sum is None or k <= PREFIX_LIMIT:
            self.prefix = False
            self.priors = priors
            self.raw_priors = raw_priors
            self._edges(k)
        else:
            self.prefix = True
            self.prior_sum = prior_sum
            self.priors = self.raw_priors = _NO_FLOATS
            self._edges(0)
            self.grow(1)

    def _edges(self, n: int) -> None:
        self.children = [None] * n
        self.e_visits = np.zeros(n, dtype=np.int64)
        self.e_weight = np.zeros(n, dtype=np.float64)
        self.e_usum = np.zeros(n, dtype=np.float64)
        self.e_virtual = np.zeros(n, dtype=np.int64)

    def grow(self, m: int) -> None:
        """Make the edge arrays cover at least the first ``m`` edges."""
        have = len(self.e_visits)
        if m <= have or not self.prefix:
            return
        assert self.ev is not None
        cap = self.n_moves if m > PREFIX_STEPS[-1] else next(c for c in PREFIX_STEPS if c >= m)
        # the same float32 -> float64 values and division as the full arrays (``Search._expand``)
        raw = self.ev.policy[self.moves[:cap]].astype(np.float64)
        self.raw_priors = raw
        self.priors = raw / self.prior_sum
        self.children.extend([None] * (cap - have))
        self.e_visits = _grown(self.e_visits, cap)
        self.e_weight = _grown(self.e_weight, cap)
        self.e_usum = _grown(self.e_usum, cap)
        self.e_virtual = _grown(self.e_virtual, cap)
        self.prefix = cap < self.n_moves

    def make_full(self) -> None:
        """Edge arrays over every move (a node that becomes the root)."""
        self.grow(self.n_moves + 1)

    def add(self, v: LeafValue) -> None:
        self.add_weighted(v.weighted(), v)

    def add_weighted(
        self, sums: tuple[float, float, float, float, float, float, float, float, float], v: LeafValue
    ) -> None:
        """One visit of ``v``; ``sums`` is ``v.weighted()``."""
        w, ww, wu, wuu, wwl, wnr, wsm, wsq, wld = sums
        self.visits += 1
        self.weight += w
        self.weight_sq += ww
        self.u_sum += wu
        self.u_sq += wuu
        self.wl_sum += wwl
        self.nr_sum += wnr
        self.score_sum += wsm
        self.score_sq_sum += wsq
        self.lead_sum += wld
        if self.own_sum is not None and self.own_sq is not None and v.ownership is not None:
            self.own_sum += w * v.ownership
            self.own_sq += w * v.ownership * v.ownership

    # averages (White's perspective); only meaningful when weight > 0
    def avg(self, total: float) -> float:
        return total / self.weight if self.weight > 0 else 0.0

    utility = _Mean(attrgetter("u_sum"))
    win_loss = _Mean(attrgetter("wl_sum"))
    score_mean = _Mean(attrgetter("score_sum"))
    lead = _Mean(attrgetter("lead_sum"))

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
        """The edge of ``move``; -1 where it is not a move here or its edge was never grown
        (no child can exist there)."""
        hits = np.nonzero(self.moves == move)[0]
        return int(hits[0]) if len(hits) and hits[0] < len(self.children) else -1


def _grown(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` followed by zeros up to length ``n``."""
    out = np.zeros(n, dtype=a.dtype)
    out[: len(a)] = a
    return out
