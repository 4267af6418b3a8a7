"""Which root move a search would play, and how sure it is: KataGo's play selection values.

Move order (``playSelectionValue``): the most-weighted child keeps its edge weight; every other
child keeps only the weight PUCT would have given it had the best child's value been known
(KataGo's reduction of exploration-only visits), and values below ``chosenMovePrune`` visits
become 0. With ``useLcbForSelection`` a child whose utility LCB beats the top child's, and that
has at least ``minVisitPropForLCB`` of its weight, is moved to the top. An LCB computed for the
mover is a *lower* bound for the mover. The response JSON built from these values is
``agent.protocol.response``'s.
"""

from __future__ import annotations

import math

import numpy as np

from agent.search.mcts import Search
from agent.search.node import Node


def utility_lcb(search: Search, child: Node, bonus_utility: float = 0.0) -> tuple[float, float]:
    """(LCB of the child's utility from the root mover's view, its radius), KataGo's formula: a
    small prior at the largest possible variance keeps few-visit LCBs wide."""
    p = search.params
    big = search.util.utility_radius()
    w, wsq = child.weight, child.weight_sq
    if child.visits <= 0 or w <= 0 or wsq <= 0:
        radius = 2.0 * big * p.lcb_stdevs
        return -radius, radius
    ess = w * w / wsq
    prior_w = w / (ess * ess * ess)
    u = child.utility
    usq = max(child.avg(child.u_sq), u * u + 1e-8)
    usq = (usq * w + (usq + big * big) * prior_w) / (w + prior_w)
    w2, wsq2 = w + prior_w, wsq + prior_w * prior_w
    ess = w2 * w2 / wsq2
    radius = math.sqrt(max(0.0, usq - u * u) / ess) * p.lcb_stdevs
    return search.root.sign * (u + bonus_utility) - radius, radius


def play_selection_values(search: Search) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(play selection values, utility LCBs and LCB radii from the mover's view) per root edge."""
    root = search.root
    p = search.params
    k = len(root.moves)
    psv = np.zeros(k)
    lcbs = np.full(k, -1e9)
    radii = np.full(k, 1e9)
    if k == 0:
        return psv, lcbs, radii
    w = root.e_weight
    best = int(np.argmax(w))
    if w[best] <= 0:
        return psv, lcbs, radii
    sign = root.sign
    bonus = search._bonus_utility(root) if search.root_bonus.any() else np.zeros(k)
    explore = search.explore_scaling(root, float(w.sum()))
    q = np.where(w > 0, sign * (root.e_usum / np.where(w > 0, w, 1.0) + bonus), 0.0)
    target = q[best] + explore * root.priors[best] / (1.0 + w[best])
    for i in range(k):
        if w[i] <= 0:
            continue
        child = root.children[i]
        if child is not None and child.weight > 0:
            lcbs[i], radii[i] = utility_lcb(search, child, float(bonus[i]))
        if i == best:
            psv[i] = w[i]
            continue
        gap = target - q[i]
        reduced = w[i] if gap <= 0 else min(w[i], max(0.0, explore * root.priors[i] / gap - 1.0))
        psv[i] = math.ceil(reduced - 1e-9) if reduced < w[i] else w[i]
    if p.use_lcb_for_selection:
        # the best-LCB move among those with enough weight gets a value large enough to lead
        eligible = (psv > 0) & (psv >= p.min_visit_prop_for_lcb * w[best])
        if eligible.any():
            cand = int(np.argmax(np.where(eligible, lcbs, -np.inf)))
            adjusted = psv[cand]
            for i in range(k):
                excess = lcbs[cand] - lcbs[i]
                if i == cand or excess < 0 or psv[i] <= 0:
                    continue
                factor = (radii[i] + excess) / (radii[i] + 0.2 * excess)
                adjusted = max(adjusted, factor * factor * psv[i])
            psv[cand] = adjusted
    prune = min(p.chosen_move_prune, psv.max() / 64.0)
    psv[psv < prune] = 0.0
    return psv, lcbs, radii
