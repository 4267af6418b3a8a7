"""Post-processing of raw network outputs, shared by every runtime (spec §4).

A runtime returns raw outputs (:class:`~agent.backends.base.NNOutputs`) from the side to move's
perspective, in the *symmetrised* frame of its input buffer. This module turns one batch row of
them into an :class:`NetEval`, the form search and ``rawnn`` use, exactly as KataGo's
``NNEvaluator`` does:

* **policy**: logits ``p0 + (p1 - p0) * optimism`` when the net has 2 or 4 policy channels (only
  channel 0 otherwise; KataGo's ``kata-raw-nn`` default optimism is 0.2, search's plain policy
  uses 0), mapped back through the symmetry, cropped to the board, pass appended, softmax in
  float32 over legal moves only;
* **value**: softmax of the three logits in double; no-result is forced to exactly 0 when the ko
  rule is not SIMPLE and scoring is AREA;
* **score**: mean, stdev (softplus), lead, variance-time (softplus) times the header multipliers;
  mean, mean² and lead are scaled by ``1 - noResult``; short-term errors by version (v8: -1);
* **ownership**: ``tanh`` of the raw map, back through the symmetry, cropped;
* **perspective**: everything is converted to White's view (win/loss swap, signs of score, lead
  and ownership) when Black is to move. ``noResult``, ``scoreMeanSq``, ``varTimeLeft`` and the
  errors have no sign.

Grids are row-major from the top-left of the board: ``index = y * board_x + x``; the policy has
one more entry, the pass move, at index ``board_x * board_y``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.game.symmetry import invert_symmetry_map
from agent.network.model import F32, PostProcessParams
from agent.network.tensors import NNOutputs

BoolArray = npt.NDArray[np.bool_]
DEFAULT_RAWNN_POLICY_OPTIMISM = 0.2


@dataclass(frozen=True)
class RowContext:
    """What post-processing needs to know about one evaluated position.

    ``legal``: bool ``[board_y*board_x + 1]`` in the canonical (unrotated) frame, pass last; a
    buffer-sized mask ``[buffer_y*buffer_x + 1]`` (as ``agent.game.features.legal_mask`` returns)
    is accepted too and cropped to the board.
    ``no_result_impossible``: True when the ko rule is not SIMPLE and scoring is AREA.
    ``buffer_x/buffer_y``: the NN input buffer the board sat in (top-left corner, before symmetry).
    """

    board_x: int
    board_y: int
    white_to_move: bool
    legal: BoolArray
    no_result_impossible: bool = False
    symmetry: int = 0
    buffer_x: int = 19
    buffer_y: int = 19


@dataclass(frozen=True)
class NetEval:
    """A post-processed evaluation from **White's perspective** (like ``kata-raw-nn``).

    ``policy_source`` and ``ownership_source`` make ``policy`` and ``white_ownership`` on first
    use (constant functions where they are known).

    ``policy`` holds probabilities (0 where illegal, see ``legal``), pass last.
    ``white_score_mean`` is KataGo's ``whiteScoreSelfplay``; ``score_stdev`` is
    ``sqrt(max(0, meanSq - mean²))`` as KataGo derives it. Version-8 nets report -1 for
    ``var_time_left`` and the short-term errors.
    """

    board_x: int
    board_y: int
    white_to_move: bool
    legal: BoolArray
    white_win: float
    white_loss: float
    no_result: float
    white_score_mean: float
    white_score_mean_sq: float
    white_lead: float
    score_stdev: float
    var_time_left: float
    shortterm_winloss_error: float
    shortterm_score_error: float
    policy_source: Callable[[], F32] = field(repr=False, compare=False)
    ownership_source: Callable[[], F32] = field(repr=False, compare=False)

    @cached_property
    def policy(self) -> F32:
        """Move probabilities, pass last (computed on first use: the search expands a node
        when a playout first walks through it, or meanwhile in its speculation helper)."""
        return self.policy_source()

    @cached_property
    def white_ownership(self) -> F32:
        """Ownership from White's view, board-sized (computed on first use: the search only
        reads it where ownership is reported)."""
        return self.ownership_source()

    @property
    def policy_pass(self) -> float:
        return float(self.policy[-1])

    def to_rawnn(self, position_id: Any = None) -> dict[str, Any]:
        """The ``kata-raw-nn`` fields as a JSON-ready dict; ``null`` policy where illegal."""
        area = self.board_x * self.board_y
        policy = [
            round(float(p), 7) if ok else None
            for p, ok in zip(self.policy[:area], self.legal[:area], strict=True)
        ]
        out: dict[str, Any] = {} if position_id is None else {"id": position_id}
        out.update(
            whiteWin=round(self.white_win, 7),
            whiteLoss=round(self.white_loss, 7),
            noResult=round(self.no_result, 7),
            whiteLead=round(self.white_lead, 5),
            whiteScoreSelfplay=round(self.white_score_mean, 5),
            whiteScoreSelfplaySq=round(self.white_score_mean_sq, 4),
            varTimeLeft=round(self.var_time_left, 5),
            shorttermWinlossError=round(self.shortterm_winloss_error, 6),
            shorttermScoreError=round(self.shortterm_score_error, 5),
            policy=policy,
            policyPass=round(self.policy_pass, 7),
            whiteOwnership=[round(float(v), 7) for v in self.white_ownership],
        )
        return out


def sym_out(a: np.ndarray, symmetry: int) -> np.ndarray:
    """Inverse of the input symmetry on ``[..., H, W]`` maps (see :mod:`agent.game.symmetry`)."""
    return invert_symmetry_map(a, symmetry)


def _softplus(x: float) -> float:
    return x if x > 40 else math.log1p(math.exp(x))


def mixed_policy_logits(raw: NNOutputs, row: int, optimism: float) -> tuple[F32, float]:
    """Spatial logits ``[H*W]`` (network frame) and the pass logit with optimism mixed in."""
    pol = raw.policy[row]
    pas = raw.policy_pass[row]
    if pol.shape[0] >= 2:
        opt = np.float32(optimism)
        return pol[0] + (pol[1] - pol[0]) * opt, float(pas[0] + (pas[1] - pas[0]) * opt)
    return pol[0], float(pas[0])


@lru_cache(maxsize=256)
def _gather(symmetry: int, board_x: int, board_y: int, buffer_x: int, buffer_y: int) -> npt.NDArray[np.intp]:
    """Where each board point's output sits in a network-frame buffer row (``sym_out`` as an
    index table), pass last (index ``buffer_x * buffer_y``)."""
    grid = np.arange(buffer_x * buffer_y, dtype=np.intp).reshape(buffer_y, buffer_x)
    board = sym_out(grid, symmetry)[:board_y, :board_x].reshape(-1)
    out = np.append(board, buffer_x * buffer_y)
    out.flags.writeable = False
    return out


def _ownership(own_row: F32, gather: npt.NDArray[np.intp], sign: float) -> Callable[[], F32]:
    def make() -> F32:
        own = np.tanh(own_row.take(gather[:-1]))
        return np.ascontiguousarray(own * np.float32(sign), dtype=np.float32)

    return make


PASS_CAP_FACTOR = 19.0


def cap_pass_policy(p: F32) -> F32:
    """KataGo's passing hack on a policy: pass at most 19x the sum of the other legal moves."""
    others = float(p[:-1].sum())
    if p[-1] <= PASS_CAP_FACTOR * others or others <= 0.0:
        return p
    q = p.copy()
    q[-1] = np.float32(PASS_CAP_FACTOR * others)
    return (q / q.sum(dtype=np.float32)).astype(np.float32)


# logits, pass logit, legal mask, gather index, temperature, pass cap (see _softmax_policy)
_PolicyArgs = tuple[F32, float, BoolArray, npt.NDArray[np.intp], float, bool]


class _PolicyMaker:
    """``NetEval.policy_source`` for a network row: the softmax over legal moves, made once; the
    row's logits (a view that keeps the whole batch's policy output alive) are let go then, so a
    cached or kept evaluation holds only its policy."""

    __slots__ = ("args", "result")

    def __init__(self, *args: *_PolicyArgs) -> None:
        """``args``: those of :func:`_softmax_policy`."""
        self.args: _PolicyArgs | None = args
        self.result: F32 | None = None

    def __call__(self) -> F32:
        if self.result is None:
            assert self.args is not None
            self.result = _softmax_policy(*self.args)
            self.args = None
        return self.result


def _softmax_policy(
    logits: F32,
    pass_logit: float,
    legal: BoolArray,
    gather: npt.NDArray[np.intp],
    temperature: float,
    pass_cap: bool,
) -> F32:
    flat = np.empty(len(logits) + 1, dtype=np.float32)
    flat[:-1] = logits
    flat[-1] = pass_logit
    where = np.flatnonzero(legal)
    zl = flat.take(gather.take(where))
    if temperature != 1.0:
        zl *= np.float32(1.0 / temperature)
    zl -= zl.max()
    e = np.exp(zl)
    e /= e.sum(dtype=np.float32)
    probs = np.zeros(len(legal), dtype=np.float32)
    probs[where] = e
    return cap_pass_policy(probs) if pass_cap else probs


def postprocess_row(
    raw: NNOutputs,
    row: int,
    params: PostProcessParams,
    ctx: RowContext,
    *,
    policy_optimism: float = 0.0,
    policy_temperature: float = 1.0,
    symmetry: int | None = None,
    pass_cap: bool = False,
) -> NetEval:
    """Post-process batch row ``row`` of ``raw`` (see the module docstring); ``symmetry``, when
    given, is the one the row was evaluated under (instead of ``ctx.symmetry``); ``pass_cap``
    applies KataGo's passing hack (``cap_pass_policy``) to the policy."""
    hb, wb, bx, by = ctx.buffer_y, ctx.buffer_x, ctx.board_x, ctx.board_y
    if raw.policy.shape[-1] != hb * wb or raw.ownership.shape[-1] != hb * wb:
        raise ValueError(f"raw outputs have {raw.policy.shape[-1]} positions, expected buffer {wb}x{hb}")
    legal = _board_legal(ctx)
    gather = _gather(ctx.symmetry if symmetry is None else symmetry, bx, by, wb, hb)

    # policy (float32, as NNEvaluator): legal points gathered from the network frame, softmax
    if policy_optimism == 0.0 or raw.policy.shape[1] < 2:
        logits, pass_logit = raw.policy[row, 0], float(raw.policy_pass[row, 0])
    else:
        logits, pass_logit = mixed_policy_logits(raw, row, policy_optimism)

    # value and score (double)
    win_l, loss_l, nr_l = raw.value[row].tolist()
    if ctx.no_result_impossible:
        nr_l -= 100000.0
    mx = max(win_l, loss_l, nr_l)
    ew, el, en = math.exp(win_l - mx), math.exp(loss_l - mx), math.exp(nr_l - mx)
    if ctx.no_result_impossible:
        en = 0.0
    total = ew + el + en
    win, loss, no_result = ew / total, el / total, en / total
    sv = raw.score_value[row].tolist()
    score_mean = sv[0] * params.score_mean_multiplier
    stdev = _softplus(sv[1]) * params.score_stdev_multiplier
    mean_sq = score_mean * score_mean + stdev * stdev
    lead = sv[2] * params.lead_multiplier if len(sv) > 2 else score_mean
    var_time = _softplus(sv[3]) * params.variance_time_multiplier if len(sv) > 3 else -1.0
    score_mean *= 1.0 - no_result
    mean_sq *= 1.0 - no_result
    lead *= 1.0 - no_result
    st_wl, st_score = _shortterm_errors(sv, params)
    if params.model_version < 9:
        var_time = -1.0

    sign = 1.0 if ctx.white_to_move else -1.0
    if not ctx.white_to_move:
        win, loss = loss, win
    return NetEval(
        board_x=bx,
        board_y=by,
        white_to_move=ctx.white_to_move,
        legal=legal,
        white_win=float(np.float32(win)),
        white_loss=float(np.float32(loss)),
        no_result=float(np.float32(no_result)),
        white_score_mean=sign * score_mean,
        white_score_mean_sq=mean_sq,
        white_lead=sign * lead,
        score_stdev=math.sqrt(max(0.0, mean_sq - score_mean * score_mean)),
        var_time_left=var_time,
        shortterm_winloss_error=st_wl,
        shortterm_score_error=st_score,
        policy_source=_PolicyMaker(logits, pass_logit, legal, gather, policy_temperature, pass_cap),
        ownership_source=_ownership(raw.ownership[row], gather, sign),
    )


def _board_legal(ctx: RowContext) -> BoolArray:
    bx, by = ctx.board_x, ctx.board_y
    legal = np.asarray(ctx.legal, dtype=bool)
    if legal.shape == (bx * by + 1,):
        return legal
    if legal.shape == (ctx.buffer_x * ctx.buffer_y + 1,):
        board = legal[:-1].reshape(ctx.buffer_y, ctx.buffer_x)[:by, :bx].reshape(-1)
        return np.append(board, legal[-1])
    raise ValueError(f"legal mask: got shape {legal.shape}, expected ({bx * by + 1},)")


def _shortterm_errors(sv: list[float], params: PostProcessParams) -> tuple[float, float]:
    v = params.model_version
    if v < 9 or len(sv) < 6:
        return -1.0, -1.0
    if v >= 14:
        s1, s2 = _softplus(0.5 * sv[4]), _softplus(0.5 * sv[5])
        return (
            math.sqrt(s1 * s1 * params.shortterm_value_error_multiplier),
            math.sqrt(s2 * s2 * params.shortterm_score_error_multiplier),
        )
    if v >= 10:
        return (
            math.sqrt(_softplus(sv[4]) * params.shortterm_value_error_multiplier),
            math.sqrt(_softplus(sv[5]) * params.shortterm_score_error_multiplier),
        )
    return _softplus(sv[4]), 10.0 * _softplus(sv[5])


def legal_mask_from_features(spatial: F32, global_: F32, board_x: int, board_y: int) -> BoolArray:
    """Legal moves (canonical frame, pass last) recovered from one row of V7 features.

    For inputs recorded without a game state (``inputs-v7.npz``). Symmetry 0 only. A point is
    legal when it is on the board, empty (ch 1, 2), not ko/superko-banned (ch 6) and not illegal
    suicide: some neighbour is empty, an own chain with >= 2 liberties (own stone without ch 3),
    an opponent chain in atari (ch 3: a capture), or any own chain if multi-stone suicide is legal
    (global 8).
    """
    sp = spatial[:, :board_y, :board_x] > 0.5
    onb, own, opp, atari, banned = sp[0], sp[1], sp[2], sp[3], sp[6]
    empty = onb & ~own & ~opp
    suicide_ok = bool(global_[8] > 0.5)
    helps = empty | (own & (~atari | suicide_ok)) | (opp & atari)
    any_help = np.zeros_like(helps)
    any_help[1:] |= helps[:-1]
    any_help[:-1] |= helps[1:]
    any_help[:, 1:] |= helps[:, :-1]
    any_help[:, :-1] |= helps[:, 1:]
    legal = empty & ~banned & any_help
    return np.append(legal.reshape(-1), True)
