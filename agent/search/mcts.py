"""PUCT Monte-Carlo tree search in the style of KataGo.

Notation: ``P`` prior, ``W`` summed visit weight, ``U`` utility (win/loss + score, see
``utility.py``), values from the side to move at the node being expanded.

Selection at a node picks the child maximising ``Q + c * sqrt(W_parent + 0.01) * f * P / (1 + W_child)``:

* ``c = cpuctExploration + cpuctExplorationLog * log((W_parent + base) / base)`` grows with visits;
* ``f = 1 + cpuctUtilityStdevScale * (sigma / cpuctUtilityStdevPrior - 1)`` scales exploration
  with the parent's observed utility stdev (shrunk toward the prior);
* unvisited children get first-play urgency: the parent's utility (its NN value blended with its
  average by the visited policy mass) minus ``fpuReductionMax * sqrt(visited policy mass)``
  (``rootFpuReductionMax`` at the root);
* at the root, ``rootPolicyTemperature`` reshapes the priors, and ``wideRootNoise`` flattens them
  (``P ** (1 / (4 * noise + 1))``) and adds a random half-normal bonus to half the children
  that can be chosen (those tried so far and the new one), drawn anew for each selection.

Leaf batching: each search thread selects a leaf under the tree lock, adding a virtual loss on
the path, evaluates it outside the lock (the ``NNEvaluator`` batches concurrent requests), then
backs up under the lock and removes the virtual loss. Two threads reaching the same pending leaf
count a collision and retry.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable

import numpy as np

from agent.network.postprocess import NetEval
from agent.search.ending import ending_white_bonus
from agent.search.evaluator import NNEvaluator, average_evals
from agent.search.node import PREFIX_LIMIT, LeafValue, Node
from agent.search.params import SearchParams
from agent.search.position import SearchState
from agent.search.speculate import Prepared, Speculator
from agent.search.symmetry import orbits, position_symmetries
from agent.search.utility import UtilityModel

logger = logging.getLogger(__name__)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as ``taskset`` sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


Avoid = dict[int, dict[int, int]]  # colour -> {policy index: untilDepth}


class Search:
    """One search over one root position. Not reusable across positions (see ``tree reuse``
    in the engine, which hands over a subtree as ``root``)."""

    def __init__(
        self,
        evaluator: NNEvaluator,
        params: SearchParams,
        root_state: SearchState,
        *,
        avoid: Avoid | None = None,
        track_ownership: bool = False,
        track_moves_ownership: bool = False,
        seed: int | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.params = params
        self.avoid = avoid or {}
        self.track_ownership = track_ownership
        self.track_moves_ownership = track_moves_ownership
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(self.rng.getrandbits(64))
        self.peek_rng = np.random.default_rng()  # a copy of np_rng's state for each peek_leaf
        self.speculator: Speculator | None = None
        self.speculated = (0, 0)  # leaves the speculator prepared, and how many of them were used
        self.speculated_runs = (0, 0)  # evaluations it started early, and how many were used
        self.deferred: list[Node] = []  # evaluated nodes whose expansion waits (see playout)
        self.inflight_path: list[tuple[Node, int]] = []  # edges to the leaf being evaluated
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.root = Node(root_state, track_ownership=track_ownership)
        self.util = UtilityModel(params, root_state.x_size * root_state.y_size)
        self.root_pass_would_end_game = root_state.gs.pass_would_end_game()
        self.playouts = 0
        self.collisions = 0
        self.start_time = 0.0
        self.elapsed = 0.0
        self.root_raw: NetEval | None = None
        self.root_copies: dict[int, tuple[int, int]] = {}  # pruned symmetric move -> (representative, sym)
        self.root_bonus = np.zeros(0)  # ending bonus (White points) per root edge
        self.root_has_bonus = False
        self.root_prefix_ok = False  # the root's selection may use the prefix form (see _select)
        self.root_select_priors = np.zeros(0)  # root priors as selection sees them (wide root noise)

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, state: SearchState, is_root: bool) -> NetEval:
        p = self.params
        ev = self.evaluator
        spec = self.speculator
        if not is_root:
            ready = spec.take(state) if spec is not None else None
            if ready is None:
                ready = self.prepare(state)
            return ev.evaluate(
                ready.key,
                ready.inputs,
                ready.ctx,
                symmetry=ev.random_symmetry(),
                optimism=p.policy_optimism,
                temperature=p.nn_policy_temperature,
                passing_hacks=p.enable_passing_hacks,
                on_wait=spec.on_wait if spec is not None else None,
                runner=spec.runner if spec is not None else None,
            )
        root = self.prepare(state)
        evals = [
            ev.evaluate(
                root.key,
                root.inputs,
                root.ctx,
                symmetry=s,
                optimism=p.root_policy_optimism,
                temperature=p.nn_policy_temperature,
                passing_hacks=p.enable_passing_hacks,
            )
            for s in ev.sample_symmetries(p.root_num_symmetries_to_sample)
        ]
        return average_evals(evals)

    def prepare(self, state: SearchState) -> Prepared:
        """A leaf's evaluation inputs (NN key, V7 features, post-processing context)."""
        p = self.params
        ev = self.evaluator
        spatial, global_, legal = state.encode(p, ev.buffer, ev.pass_alive_suicide)
        return Prepared(state, state.nn_key(p), spatial, global_, state.row_context(legal, ev.buffer))

    def peek_leaf(self, path: list[tuple[Node, int]] | None = None) -> Node | None:
        """The leaf the next playout would evaluate if it started now (call under ``lock``):
        the same walk as ``playout`` without virtual losses, ``tried`` marks or the search's
        random numbers (a copy of their state: the root's wide-root-noise draws are the ones the
        next playout will make). None where that walk ends at a pending, terminal or childless
        node. The edges walked are appended to ``path`` when given."""
        self.peek_rng.bit_generator.state = self.np_rng.bit_generator.state
        node = self.root
        while True:
            if node.terminal is not None:
                return None
            if node.deferred:
                self.expand_deferred_node(node)
            elif not node.expanded:
                return None if node.pending else node
            if len(node.moves) == 0:
                return None
            k = self._select(node, self.peek_rng)
            if path is not None:
                path.append((node, k))
            node = self._child(node, k)

    def peek_leaf_neutral(self, path: list[tuple[Node, int]]) -> Node | None:
        """``peek_leaf`` as if the leaf in flight had come back with its parent's average value
        (a visit of weight 1 instead of its virtual loss; call under ``lock``). None also where the
        walk would go into that leaf (its children are not known yet). The statistics it touches
        are saved and put back exactly."""
        steps = self.inflight_path
        if not steps:
            return None
        parent = steps[-1][0]
        u = parent.utility if parent.weight > 0 else parent.nn_utility
        saved = [
            (
                n,
                k,
                n.e_visits[k],
                n.e_weight[k],
                n.e_usum[k],
                n.e_virtual[k],
                n.visits,
                n.weight,
                n.weight_sq,
                n.u_sum,
                n.u_sq,
            )
            for n, k in steps
        ]
        try:
            for n, k in steps:
                n.e_virtual[k] -= 1
                n.e_visits[k] += 1
                n.e_weight[k] += 1.0
                n.e_usum[k] += u
                n.visits += 1
                n.weight += 1.0
                n.weight_sq += 1.0
                n.u_sum += u
                n.u_sq += u * u
            return self.peek_leaf(path)
        finally:
            for n, k, ev, ew, eu, evl, nv, nw, nw2, nu, nu2 in saved:
                n.e_visits[k], n.e_weight[k], n.e_usum[k], n.e_virtual[k] = ev, ew, eu, evl
                n.visits, n.weight, n.weight_sq, n.u_sum, n.u_sq = nv, nw, nw2, nu, nu2

    def _leaf_value(self, ev: NetEval, track_own: bool) -> tuple[LeafValue, float]:
        u = self.util.utility(ev.white_win, ev.white_loss, ev.no_result, ev.white_score_mean, ev.score_stdev)
        w = self.util.weight(ev.white_score_mean, ev.shortterm_winloss_error, ev.shortterm_score_error)
        return (
            LeafValue(
                utility=u,
                win_loss=ev.white_win - ev.white_loss,
                no_result=ev.no_result,
                score_mean=ev.white_score_mean,
                score_mean_sq=ev.white_score_mean_sq,
                lead=ev.white_lead,
                weight=w,
                ownership=ev.white_ownership.astype(np.float64) if track_own else None,
            ),
            u,
        )

    def _terminal_value(self, state: SearchState) -> LeafValue:
        score = state.final_white_score()
        wl = (
            1.0
            if score > 0
            else (-1.0 if score < 0 else 2.0 * self.params.draw_equivalent_wins_for_white - 1.0)
        )
        own = None
        if self.track_ownership:
            from agent.game.area import calculate_area
            from agent.game.board import BLACK, WHITE

            board = state.gs.board
            area = calculate_area(board, True, True, True, state.gs.rules.suicide)
            own = np.array(
                [
                    1.0 if area[loc] == WHITE else (-1.0 if area[loc] == BLACK else 0.0)
                    for loc in board.geo.all_locs()
                ]
            )
        return LeafValue(
            utility=self.util.terminal_utility(score),
            win_loss=wl,
            no_result=0.0,
            score_mean=score,
            score_mean_sq=score * score,
            lead=score,
            weight=self._terminal_weight(),
            ownership=own,
        )

    def _terminal_weight(self) -> float:
        """A finished game has no uncertainty: with uncertainty weighting its visits get the
        maximum weight (``coeff / (0 + coeff / maxWeight)``), like KataGo's."""
        p = self.params
        raw = self.root_raw or self.root.ev
        if p.use_uncertainty and raw is not None and raw.shortterm_winloss_error >= 0:
            return p.uncertainty_max_weight
        return 1.0

    def _expand(self, node: Node, ev: NetEval, nn_utility: float) -> None:
        state = node.state
        legal = ev.legal
        idx = np.nonzero(legal)[0]
        pri = ev.policy[idx].astype(np.float64)
        table = self.avoid.get(state.pla)
        if table:
            keep = np.array([table.get(int(i), 0) <= state.depth for i in idx], dtype=bool)
            if keep.any():
                idx, pri = idx[keep], pri[keep]
        order = np.argsort(-pri, kind="stable")
        idx, pri = idx[order], pri[order]
        if node is not self.root and len(idx) > PREFIX_LIMIT:
            # below the root only a prefix of the edges is ever looked at (see node.py): its
            # float64 priors are made from the network's as the prefix grows
            s = pri.sum()
            node.expand(ev, idx, pri, pri, nn_utility, prior_sum=float(s) if s > 0 else 1.0)
            return
        raw = pri.copy()
        if node is self.root and self.params.root_symmetry_pruning and not table:
            syms = position_symmetries(state)
            if syms:
                copies = orbits([int(i) for i in idx], syms, state.x_size, state.y_size)
                if copies:
                    pos = {int(m): k for k, m in enumerate(idx)}
                    for copy, (rep, _s) in copies.items():
                        pri[pos[rep]] += pri[pos[copy]]  # the representative carries its orbit's policy
                    keep = np.array([int(m) not in copies for m in idx], dtype=bool)
                    idx, pri, raw = idx[keep], pri[keep], raw[keep]
                    self.root_copies = copies
        if node is self.root and self.params.root_policy_temperature != 1.0:
            with np.errstate(divide="ignore"):
                pri = np.power(np.maximum(pri, 1e-30), 1.0 / self.params.root_policy_temperature)
            pri = pri / pri.sum()
        s = pri.sum()
        if s > 0:
            pri = pri / s
        node.expand(ev, idx.astype(np.int64), pri, raw, nn_utility)

    def expand_deferred_node(self, node: Node) -> None:
        """Expand ``node``, evaluated and backed up, whose expansion was left for later."""
        assert node.ev is not None
        node.deferred = False
        self._expand(node, node.ev, node.nn_utility)

    def expand_deferred(self) -> None:
        """Expand the nodes the speculation helper was to expand (call under ``lock``)."""
        for node in self.deferred:
            if node.deferred:
                self.expand_deferred_node(node)
        self.deferred.clear()

    def expand_subtree(self, top: Node) -> None:
        """Expand every node of ``top``'s subtree whose expansion was left for later, as this
        search would have (its avoid rules, depths from its root): before the subtree is handed
        to another search (tree reuse) or walked by move (call under ``lock``)."""
        stack = [top]
        while stack:
            n = stack.pop()
            if n.deferred:
                self.expand_deferred_node(n)
            stack.extend(c for c in n.children if c is not None)

    # ------------------------------------------------------------------- selection
    def _select(self, node: Node, rng: np.random.Generator | None = None) -> int:
        if node is not self.root:
            return self._select_prefix(node, self.params.fpu_reduction_max)
        rng = self.np_rng if rng is None else rng
        if self.root_prefix_ok:
            return self._select_prefix(node, self.params.root_fpu_reduction_max, self.root_select_priors, rng)
        return self._select_full(node, rng)

    def _select_prefix(
        self,
        node: Node,
        fpu_reduction: float,
        root_priors: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> int:
        """``_select_full`` for a non-root node, in plain Python over the tried prefix.

        Below the root the priors are sorted in decreasing order (``_expand``) and only the
        highest-prior untried child competes, so the children ever tried are (nearly always
        exactly) the first ``node.tried`` ones: every later child scores ``-inf`` except the one
        at ``node.tried``, whose prior is the highest of them. The sums stay numpy reductions of
        the same arrays and every per-child expression is evaluated in the same order, so the
        choice is identical to the vectorised version.

        At the root (``root_priors`` given: the priors flattened by wide root noise, if any) it
        applies when the priors are sorted (``root_prefix_ok``); the ending bonus is added to the
        visited children's values as in the vectorised version. Wide root noise draws numbers for
        the children that can be chosen (the first ``tried + 1``), as the vectorised version does
        with sorted priors, so the random stream stays the same.
        """
        p = self.params
        n = len(node.moves)
        m = min(node.tried + 1, n)
        visits = node.e_visits[:m].tolist()
        virt = node.e_virtual[:m].tolist()
        weight = node.e_weight[:m].tolist()
        usum = node.e_usum[:m].tolist()
        pri = (node.priors if root_priors is None else root_priors)[:m].tolist()
        sign = node.sign
        any_virtual = any(virt)
        visited = [visits[j] > 0 or virt[j] > 0 for j in range(m)] if any_virtual else [v > 0 for v in visits]
        n_visited = sum(visited)
        total = float(node.e_weight.sum())
        parent_avg = sign * node.utility if node.weight > 0 else sign * node.nn_utility
        explore = self.explore_scaling(node, total)
        # the same selected elements in the same order as a mask over every edge: the same sum
        # (usually the visited children are the first ones: a slice holds the same elements)
        if not n_visited:
            visited_mass = 0.0
        elif all(visited[:n_visited]):
            visited_mass = float(node.raw_priors[:n_visited].sum())
        else:
            visited_mass = float(node.raw_priors[:m][np.array(visited, dtype=bool)].sum())
        avg_w = min(1.0, visited_mass**p.fpu_parent_weight_by_visited_policy_pow)
        parent_u = avg_w * parent_avg + (1.0 - avg_w) * sign * node.nn_utility
        fpu = parent_u - fpu_reduction * math.sqrt(visited_mass)
        vl = p.virtual_loss_visits
        radius = p.win_loss_utility_factor + p.static_score_utility_factor + p.dynamic_score_utility_factor
        best_new = -1
        if n_visited < n:
            best_p = -1.0
            for j in range(m):
                if not visited[j] and pri[j] > best_p:
                    best_p = pri[j]
                    best_new = j
        noise = p.wide_root_noise if root_priors is not None else 0.0
        if noise > 0:
            rng = self.np_rng if rng is None else rng
            coin = (rng.random(m) < 0.5).tolist()
            normal = rng.standard_normal(m).tolist()
        bonus = self.root_bonus[:m].tolist() if root_priors is not None and self.root_has_bonus else None
        best = -1
        best_score = -math.inf
        for j in range(m):
            if not visited[j] and j != best_new:
                continue
            w = weight[j]
            q = sign * usum[j] / w if w > 0 else fpu
            if bonus is not None:
                q = q + sign * self._bonus_utility_of(node, j, bonus[j])
            w_eff = w
            if any_virtual:
                vlw = vl * virt[j]
                frac = vlw / (vlw + max(0.25, w))
                q = q + (-radius - q) * frac
                w_eff = w + vlw
            if noise > 0:
                q = q + (noise * abs(normal[j]) if coin[j] else 0.0)
            score = q + explore * pri[j] / (1.0 + w_eff)
            if score > best_score or best < 0:
                best_score = score
                best = j
        return best

    def _select_full(self, node: Node, rng: np.random.Generator | None = None) -> int:
        p = self.params
        is_root = node is self.root
        vl = p.virtual_loss_visits
        virt = node.e_virtual
        weight = node.e_weight
        sign = node.sign
        visited = (node.e_visits > 0) | (virt > 0)
        total = float(weight.sum())
        pri = node.priors
        if is_root and p.wide_root_noise > 0:
            pri = np.power(pri, 1.0 / (4.0 * p.wide_root_noise + 1.0))
        parent_avg = sign * node.utility if node.weight > 0 else sign * node.nn_utility
        explore = self.explore_scaling(node, total)
        # first-play urgency
        visited_mass = float(node.raw_priors[visited].sum()) if visited.any() else 0.0
        avg_w = min(1.0, visited_mass**p.fpu_parent_weight_by_visited_policy_pow)
        parent_u = avg_w * parent_avg + (1.0 - avg_w) * sign * node.nn_utility
        red = p.root_fpu_reduction_max if is_root else p.fpu_reduction_max
        fpu = parent_u - red * math.sqrt(visited_mass)
        has_w = weight > 0
        q = np.where(has_w, sign * node.e_usum / np.where(has_w, weight, 1.0), fpu)
        w_eff = weight
        if is_root and self.root_bonus.any():
            q = q + sign * self._bonus_utility(node)
        if virt.any():
            # virtual losses pull a child's value toward a loss (KataGo's utility radius)
            radius = (
                p.win_loss_utility_factor + p.static_score_utility_factor + p.dynamic_score_utility_factor
            )
            vlw = vl * virt
            frac = vlw / (vlw + np.maximum(0.25, weight))
            q = q + (-radius - q) * frac
            w_eff = weight + vlw
        best_new = -1
        if not visited.all():
            # like KataGo, only the highest-prior move not yet tried competes as a new child
            best_new = int(np.argmax(np.where(~visited, node.priors, -1.0)))
        if is_root and p.wide_root_noise > 0:
            # noise for the children that can be chosen: the ones tried so far and the new one
            # (with sorted priors the first ``tried + 1``, as ``_select_prefix`` draws)
            rng = self.np_rng if rng is None else rng
            draw = max(min(node.tried + 1, len(q)), best_new + 1)
            coin = rng.random(draw) < 0.5
            bump = np.zeros(len(q))
            bump[:draw] = np.where(coin, p.wide_root_noise * np.abs(rng.standard_normal(draw)), 0.0)
            q = q + bump
        score = q + explore * pri / (1.0 + w_eff)
        if best_new >= 0:
            fresh = ~visited
            fresh[best_new] = False
            score = np.where(fresh, -np.inf, score)
        return int(np.argmax(score))

    def explore_scaling(self, node: Node, total_child_weight: float) -> float:
        """``cPUCT(W) * sqrt(W + 0.01) * f``: KataGo's visit-dependent cPUCT times the parent's
        utility-stdev factor (observed utility variance shrunk toward the prior)."""
        p = self.params
        prior_sd = p.cpuct_utility_stdev_prior
        pw = p.cpuct_utility_stdev_prior_weight
        if node.weight <= 1.0 or prior_sd <= 0:
            sd = prior_sd
        else:
            u = node.utility
            usq = max(node.avg(node.u_sq), u * u)
            sd = math.sqrt(
                max(
                    0.0,
                    ((u * u + prior_sd * prior_sd) * pw + usq * node.weight) / (pw + node.weight - 1.0)
                    - u * u,
                )
            )
        factor = 1.0 + p.cpuct_utility_stdev_scale * (sd / prior_sd - 1.0) if prior_sd > 0 else 1.0
        cpuct = p.cpuct_exploration + p.cpuct_exploration_log * math.log(
            (total_child_weight + p.cpuct_exploration_base) / p.cpuct_exploration_base
        )
        return cpuct * math.sqrt(total_child_weight + 0.01) * factor

    def _bonus_utility(self, node: Node) -> np.ndarray:
        """Root ending bonus as a White utility per edge (0 for unvisited edges)."""
        out = np.zeros(len(node.moves))
        for k in np.nonzero(self.root_bonus)[0]:
            out[k] = self._bonus_utility_of(node, int(k), float(self.root_bonus[k]))
        return out

    def _bonus_utility_of(self, node: Node, k: int, bonus: float) -> float:
        if bonus == 0.0:
            return 0.0
        child = node.children[k]
        if child is None or child.weight <= 0:
            return 0.0
        return self.util.score_utility_diff(child.score_mean, child.avg(child.score_sq_sum), bonus)

    def _compute_root_bonus(self) -> None:
        root = self.root
        ev = self.root_raw or root.ev
        if ev is None or self.params.root_ending_bonus_points == 0:
            self.root_bonus = np.zeros(len(root.moves))
        else:
            self.root_bonus = ending_white_bonus(
                root.state, root.moves, ev.white_ownership, self.params.root_ending_bonus_points
            )
        pri = root.priors
        noise = self.params.wide_root_noise
        self.root_select_priors = np.power(pri, 1.0 / (4.0 * noise + 1.0)) if noise > 0 else pri
        self.root_has_bonus = bool(self.root_bonus.any())
        self.root_prefix_ok = bool(np.all(pri[:-1] >= pri[1:]))

    # --------------------------------------------------------------------- playouts
    def _child(self, node: Node, k: int) -> Node:
        child = node.children[k]
        if child is None:
            move = int(node.moves[k])
            st = node.state.play(move)
            is_root = node is self.root
            conservative = (
                is_root
                and self.params.conservative_pass
                and move == st.pass_index
                and self.root_pass_would_end_game
            )
            track = self.track_moves_ownership and is_root
            if st.is_terminal(conservative) and st.gs.is_game_finished:
                child = Node(st, terminal=self._terminal_value(st), track_ownership=track)
            else:
                child = Node(st, track_ownership=track)
                child.nn_terminal = st.is_terminal(conservative)
            node.children[k] = child
        return child

    def _undo_virtual(self, path: list[tuple[Node, int]]) -> None:
        for n, k in path:
            n.e_virtual[k] -= 1

    def playout(self) -> bool:
        """One visit. Returns False on a collision (nothing added)."""
        path: list[tuple[Node, int]] = []
        with self.lock:
            spec = self.speculator
            walk = spec.take_walk() if spec is not None else None
            if walk is not None and walk[1] is not self.inflight_path:
                walk = None  # predicted for an earlier evaluation: stale
            node = self.root
            while True:
                if node.terminal is not None:
                    break
                if node.deferred:
                    self.expand_deferred_node(node)
                elif not node.expanded:
                    if node.pending:
                        self._undo_virtual(path)
                        self.collisions += 1
                        return False
                    node.pending = True
                    break
                if len(node.moves) == 0:
                    break
                k = -1
                if walk is not None:
                    steps, _, inflight = walk
                    i = len(path)
                    if i < len(steps) and steps[i][0] is node:
                        if id(node) not in inflight:
                            k = steps[i][1]  # off the last leaf's path: nothing changed since
                    else:
                        walk = None
                        if spec is not None:
                            spec.mispredicted()
                if k < 0:
                    k = self._select(node)
                    if walk is not None and k != walk[0][len(path)][1]:
                        walk = None
                        if spec is not None:
                            spec.mispredicted()
                if k >= node.tried:
                    node.tried = k + 1
                    node.grow(k + 2)  # the next selection looks at one more edge
                node.e_virtual[k] += 1
                path.append((node, k))
                node = self._child(node, k)
        ev: NetEval | None = None
        u = 0.0
        if node.terminal is not None:
            value = node.terminal
        elif node.expanded:  # no selectable child: count the node's own evaluation again
            assert node.ev is not None
            value, _ = self._leaf_value(node.ev, self.track_ownership)
        else:
            if spec is not None:
                self.inflight_path = path  # read by the speculator (under the lock) once woken
            try:
                ev = self._evaluate(node.state, False)
            except BaseException:
                with self.lock:
                    node.pending = False
                    self._undo_virtual(path)
                raise
            value, u = self._leaf_value(ev, self.track_ownership)
        with self.lock:
            if ev is not None and node.nn_terminal:
                node.terminal = value  # past the normal end (territory): no children, same value
                node.ev = ev
                node.pending = False
            elif ev is not None and not node.expanded:
                # expanded (policy softmax, edges sorted by prior) when a playout first walks
                # through it: most leaves never are. With a speculator its helper expands it
                # while the network runs the next leaf.
                node.ev, node.nn_utility, node.deferred, node.pending = ev, u, True, False
                if self.speculator is not None:
                    self.deferred.append(node)
            self._backup(path, node, value)
            self.playouts += 1
        return True

    def _backup(self, path: list[tuple[Node, int]], leaf: Node, v: LeafValue) -> None:
        sums = v.weighted()
        leaf.add_weighted(sums, v)
        w = sums[0]
        wu = sums[2]
        for n, k in reversed(path):
            n.e_virtual[k] -= 1
            n.e_visits[k] += 1
            n.e_weight[k] += w
            n.e_usum[k] += wu
            n.add_weighted(sums, v)

    # ------------------------------------------------------------------------ run
    def prepare_root(self) -> None:
        """Evaluate and expand the root (root options, symmetry sampling)."""
        root = self.root
        if root.expanded:
            return
        ev = self._evaluate(root.state, True)
        self.root_raw = ev
        center = UtilityModel.center_from_root(
            self.params, ev.white_score_mean, root.state.x_size * root.state.y_size
        )
        self.util.dynamic_center = center
        value, u = self._leaf_value(ev, self.track_ownership)
        self._expand(root, ev, u)
        self._compute_root_bonus()
        root.add(value)
        self.playouts += 1

    def adopt_root(self, node: Node) -> None:
        """Tree reuse: make ``node`` (from an earlier search) the root. Depths are rebased so
        history and avoid rules count from the new root, and the root is re-evaluated with the
        root options (optimism, conservative pass, symmetries) while its statistics are kept."""
        offset = node.state.depth
        stack = [node]
        while stack:
            n = stack.pop()
            n.state.depth -= offset
            n.pending = False
            stack.extend(c for c in n.children if c is not None)
        self.root = node
        self.root_pass_would_end_game = node.state.gs.pass_would_end_game()
        ev = self._evaluate(node.state, True)
        self.root_raw = ev
        self.util.dynamic_center = UtilityModel.center_from_root(
            self.params,
            node.score_mean if node.weight > 0 else ev.white_score_mean,
            node.state.x_size * node.state.y_size,
        )
        _, u = self._leaf_value(ev, False)
        node.make_full()
        raw = ev.policy[node.moves].astype(np.float64)
        pri = raw
        if self.params.root_policy_temperature != 1.0:
            pri = np.power(np.maximum(pri, 1e-30), 1.0 / self.params.root_policy_temperature)
        total = pri.sum()
        node.priors = pri / total if total > 0 else pri
        node.raw_priors = raw
        node.ev = ev
        node.nn_utility = u
        self._compute_root_bonus()

    def should_stop(self) -> bool:
        p = self.params
        if self.stop_event.is_set():
            return True
        if self.root.visits >= p.max_visits or self.playouts >= p.max_playouts:
            return True
        return time.monotonic() - self.start_time >= p.max_time

    def run(
        self,
        report: Callable[[Search], None] | None = None,
        report_every: float | None = None,
        first_report_after: float | None = None,
    ) -> None:
        """Search until a limit or ``stop_event``; ``report(self)`` is called periodically."""
        self.start_time = time.monotonic()
        self.prepare_root()
        n_threads = max(1, self.params.num_threads)
        errors: list[BaseException] = []

        def worker(report: Callable[[Search], None] | None = None, next_report: float = 0.0) -> None:
            """Playouts until the search stops; the calling thread's also ``report`` periodically."""
            self.evaluator.add_submitters(1)
            try:
                while not self.should_stop():
                    if report is not None and report_every is not None:
                        now = time.monotonic()
                        if now >= next_report:
                            with self.lock:
                                report(self)
                            next_report = now + report_every
                    if not self.playout():
                        time.sleep(0)
            except BaseException as exc:
                errors.append(exc)
                self.stop_event.set()
            finally:
                self.evaluator.add_submitters(-1)

        threads = [
            threading.Thread(target=worker, name=f"search-{i}", daemon=True) for i in range(1, n_threads)
        ]
        for t in threads:
            t.start()
        if n_threads == 1 and self.params.speculate and usable_cpus() > 1:
            # speculation overlaps the next leaf's preparation (and run) with the network: on a
            # single CPU nothing overlaps and its predictions only add CPU time (measured on
            # b6c96 pinned to one core: 1.5-2 ms of CPU per visit more, about 12 %)
            self.speculator = Speculator(self).start()
        if report is not None and report_every is not None:
            worker(
                report,
                self.start_time + (first_report_after if first_report_after is not None else report_every),
            )
        else:
            worker()
        for t in threads:
            t.join()
        if self.speculator is not None:
            self.speculator.stop()
            self.speculated = (self.speculator.prepared, self.speculator.used)
            self.speculated_runs = (self.speculator.runs_started, self.speculator.runs_used)
            self.speculator = None
        with self.lock:
            self.expand_deferred()  # leaves never walked through stay unexpanded (``expand_subtree``)
        self.elapsed = time.monotonic() - self.start_time
        if errors:
            raise errors[0]
