"""A search of one turn as KataGo's analysis response JSON (``Search::getAnalysisJson``).

Perspective: the tree holds White's view; ``perspective`` BLACK negates every signed value
(winrate ``w -> 1 - w``, scores, utilities, ownership), SIDETOMOVE follows the root player.
An LCB computed for the mover is a *lower* bound for the mover, so reported from the other
side it lies above the winrate (KataGo does the same).

Move order (``order``, ``playSelectionValue``) is ``agent.search.results.play_selection_values``;
symmetric copies of a searched root move (pruned by root symmetry) are reported with
``isSymmetryOf``. ``analysis_response`` adds ``id``, ``turnNumber`` and ``isDuringSearch``: it is
the ``render`` the service hands the engine with each query.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.engines.base import AnalysisRequest, Response
from agent.game.board import BLACK
from agent.search.mcts import Search
from agent.search.node import Node
from agent.search.results import play_selection_values
from agent.search.symmetry import map_index


def _fmt_hash(h: int) -> str:
    return f"{h & ((1 << 64) - 1):016X}"


class _Persp:
    def __init__(self, perspective: str, root_white_to_move: bool) -> None:
        white = perspective == "WHITE" or (perspective == "SIDETOMOVE" and root_white_to_move)
        self.s = 1.0 if white else -1.0

    def winrate(self, white_wl: float) -> float:
        return 0.5 + 0.5 * self.s * white_wl

    def v(self, white_value: float) -> float:
        return self.s * white_value


def _pv(node: Node, first: int, max_len: int) -> tuple[list[int], list[int], list[int]]:
    """Policy indices of the principal variation starting with ``first``, with visit counts."""
    moves = [first]
    idx = node.child_index(first)
    child = node.children[idx] if idx >= 0 else None
    visits = [child.visits if child is not None else 0]
    edge = [int(node.e_visits[idx]) if idx >= 0 else 0]
    cur = child
    while cur is not None and cur.expanded and len(moves) < max_len:
        if len(cur.moves) == 0 or cur.e_visits.max() <= 0:
            break
        j = int(np.argmax(cur.e_visits))
        nxt = cur.children[j]
        moves.append(int(cur.moves[j]))
        edge.append(int(cur.e_visits[j]))
        visits.append(nxt.visits if nxt is not None else 0)
        cur = nxt
    return moves, visits, edge


def _symmetric_copies(search: Search, infos: list[dict[str, Any]], per: Any) -> list[dict[str, Any]]:
    """moveInfos for root moves pruned as symmetric images of a searched move (``isSymmetryOf``)."""
    state = search.root.state
    xs, ys = state.x_size, state.y_size
    by_index = {info["_index"]: info for info in infos}
    raw = search.root_raw
    out = []
    for copy, (rep, sym) in search.root_copies.items():
        src = by_index.get(rep)
        if src is None:
            continue
        info = dict(src)
        info["move"] = state.gtp(copy)
        info["isSymmetryOf"] = src["move"]
        info["_index"] = copy
        info["pv"] = [state.gtp(map_index(m, sym, xs, ys)) for m in src["_pv"]]
        info["_pv"] = [map_index(m, sym, xs, ys) for m in src["_pv"]]
        if raw is not None:
            info["prior"] = float(raw.policy[copy])
            info["_prior"] = info["prior"]
        for key in ("ownership", "ownershipStdev"):
            if key in src:
                grid = src[key]
                mapped = [0.0] * len(grid)
                for i, v in enumerate(grid):
                    mapped[map_index(i, sym, xs, ys)] = v
                info[key] = mapped
        out.append(info)
    return out


def analysis_json(
    search: Search,
    *,
    perspective: str,
    pv_len: int = 15,
    include_policy: bool = False,
    include_ownership: bool = False,
    include_ownership_stdev: bool = False,
    include_moves_ownership: bool = False,
    include_moves_ownership_stdev: bool = False,
    include_pv_visits: bool = False,
    include_no_result_value: bool = False,
) -> dict[str, Any] | None:
    """Fields of one analysis response (without id/turnNumber/isDuringSearch); None before
    the root was evaluated."""
    root = search.root
    raw = search.root_raw or root.ev
    if raw is None or root.weight <= 0:
        return None
    state = root.state
    per = _Persp(perspective, state.white_to_move)
    wr_scale = search.util.utility_to_winrate_scale()
    psv, lcbs, radii = play_selection_values(search)
    bonus = search._bonus_utility(root) if search.root_bonus.any() else np.zeros(len(root.moves))

    infos: list[dict[str, Any]] = []
    for i in range(len(root.moves)):
        if root.e_visits[i] <= 0:
            continue
        child = root.children[i]
        if child is None or child.weight <= 0:
            continue
        move = int(root.moves[i])
        radius = float(radii[i])
        child_u = child.utility + float(bonus[i])
        mover_u = root.sign * child_u
        mover_wr = 0.5 + 0.5 * root.sign * child.win_loss
        util_lcb_white = root.sign * (mover_u - radius)
        wr_lcb_mover = mover_wr - radius / wr_scale
        wr_lcb_white = wr_lcb_mover if root.sign > 0 else 1.0 - wr_lcb_mover
        pv_idx, pv_visits, pv_edge = _pv(root, move, pv_len + 1)
        info: dict[str, Any] = {
            "move": state.gtp(move),
            "visits": child.visits,
            "edgeVisits": int(root.e_visits[i]),
            "weight": round(child.weight, 7),
            "edgeWeight": round(float(root.e_weight[i]), 7),
            "winrate": per.winrate(child.win_loss),
            "scoreMean": per.v(child.lead),
            "scoreLead": per.v(child.lead),
            "scoreSelfplay": per.v(child.score_mean),
            "scoreStdev": child.score_stdev,
            "prior": float(root.raw_priors[i]),
            "utility": per.v(child_u),
            "utilityLcb": per.v(util_lcb_white),
            "lcb": wr_lcb_white if per.s > 0 else 1.0 - wr_lcb_white,
            "playSelectionValue": round(float(psv[i]), 7),
            "pv": [state.gtp(m) for m in pv_idx],
            "_pv": pv_idx,
            "_index": move,
            "_psv": float(psv[i]),
            "_w": float(root.e_weight[i]),
            "_lcb": float(lcbs[i]),
            "_prior": float(root.raw_priors[i]),
        }
        if include_no_result_value:
            info["noResultValue"] = child.avg(child.nr_sum)
        if include_pv_visits:
            info["pvVisits"] = pv_visits
            info["pvEdgeVisits"] = pv_edge
        if (include_moves_ownership or include_moves_ownership_stdev) and child.own_sum is not None:
            mean = child.own_sum / child.weight
            if include_moves_ownership:
                info["ownership"] = [round(per.v(float(v)), 6) for v in mean]
            if include_moves_ownership_stdev and child.own_sq is not None:
                sd = np.sqrt(np.maximum(0.0, child.own_sq / child.weight - mean * mean))
                info["ownershipStdev"] = [round(float(v), 6) for v in sd]
        infos.append(info)
    infos.extend(_symmetric_copies(search, infos, per))
    infos.sort(key=lambda d: (-d["_psv"], -d["_w"], -d["_prior"], d["_index"]))
    for order, info in enumerate(infos):
        info["order"] = order
        for key in ("_psv", "_w", "_lcb", "_prior", "_pv", "_index"):
            info.pop(key)

    gs = state.gs
    root_info: dict[str, Any] = {
        "visits": root.visits,
        "weight": round(root.weight, 7),
        "winrate": per.winrate(root.win_loss),
        "scoreLead": per.v(root.lead),
        "scoreSelfplay": per.v(root.score_mean),
        "scoreStdev": root.score_stdev,
        "utility": per.v(root.utility),
        "currentPlayer": "B" if gs.pla == BLACK else "W",
        "thisHash": _fmt_hash(gs.situation_hash()),
        "symHash": _fmt_hash(gs.board.hash),
        "rawWinrate": per.winrate(raw.white_win - raw.white_loss),
        "rawLead": per.v(raw.white_lead),
        "rawScoreSelfplay": per.v(raw.white_score_mean),
        "rawScoreSelfplayStdev": raw.score_stdev,
        "rawNoResultProb": raw.no_result,
        "rawStWrError": 0.5 * raw.shortterm_winloss_error if raw.shortterm_winloss_error >= 0 else -1.0,
        "rawStScoreError": raw.shortterm_score_error,
        "rawVarTimeLeft": raw.var_time_left,
    }
    out: dict[str, Any] = {"moveInfos": infos, "rootInfo": root_info}
    if include_ownership or include_ownership_stdev:
        if root.own_sum is not None:
            mean = root.own_sum / root.weight
        else:
            mean = raw.white_ownership.astype(np.float64)
        if include_ownership:
            out["ownership"] = [round(per.v(float(v)), 6) for v in mean]
        if include_ownership_stdev:
            if root.own_sq is not None:
                sd = np.sqrt(np.maximum(0.0, root.own_sq / root.weight - mean * mean))
            else:
                sd = np.zeros_like(mean)
            out["ownershipStdev"] = [round(float(v), 6) for v in sd]
    if include_policy:
        pol = np.where(raw.legal, raw.policy.astype(np.float64), -1.0)
        out["policy"] = [float(v) if v >= 0 else -1.0 for v in pol]
    return out


def analysis_response(request: AnalysisRequest, search: Search, turn: int, during: bool) -> Response | None:
    """The response for one analysed turn of ``request`` (None before the root was evaluated)."""
    flags = {name: value for name, value in vars(request).items() if name.startswith("include_")}
    body = analysis_json(
        search, perspective=search.params.report_analysis_winrates_as, pv_len=request.analysis_pv_len, **flags
    )
    if body is None:
        return None
    return {"id": request.id, "turnNumber": turn, "isDuringSearch": during, **body}
