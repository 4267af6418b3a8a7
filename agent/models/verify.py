"""Accuracy of a converted network against the FP32 reference, in the spirit of KataGo's ``testgpuerror``.

Both networks evaluate the same positions (symmetry 0); per position we compare, from the side
to move's view and before any search:

* ``winrate_abs_error``: |Δ| of ``0.5 * (1 + win - loss)`` from the value softmax;
* ``lead_abs_error``: |Δ| of the lead in points (``score_value[2] * leadMultiplier``; v<8 nets
  use the score mean), ``score_abs_error`` the same for the score mean;
* ``policy_kl``: KL(reference ‖ converted) in nats over the legal moves and pass (policy channel
  0, no optimism), ``policy_top1_agreement``: the fraction of positions whose most likely legal
  move is the same;
* ``ownership_abs_error``: |Δ tanh(ownership)| over every on-board point of every position.

Each error is summarised as ``{mean, p99, max}``. ``thresholds`` maps ``metric.stat`` to
``[op, value]``; ``passed`` is true when every threshold holds. Defaults per precision are
:data:`DEFAULT_THRESHOLDS` (the profile may override them).
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.backends.base import NeuralNet, NNOutputs
from agent.errors import VerificationFailed
from agent.models.positions import PositionSet
from agent.network.model import PostProcessParams
from agent.network.postprocess import legal_mask_from_features

logger = logging.getLogger(__name__)

Threshold = tuple[str, float]  # (op, value), op one of "<", "<=", ">", ">="
DEFAULT_THRESHOLDS: dict[str, dict[str, Threshold]] = {
    "fp32": {"winrate_abs_error.p99": ("<", 1e-3), "policy_top1_agreement": (">=", 0.99)},
    "fp16": {"winrate_abs_error.p99": ("<", 0.01), "policy_top1_agreement": (">=", 0.99)},
    "int8": {
        "winrate_abs_error.p99": ("<", 0.03),
        "lead_abs_error.p99": ("<", 1.0),
        "policy_top1_agreement": (">=", 0.95),
    },
}
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
MIN_POSITIONS = 200


@dataclass
class VerifyReport:
    positions: int
    metrics: dict[str, Any]
    thresholds: dict[str, Threshold]
    failures: list[str] = field(default_factory=list)
    precision: str = ""
    #: earlier verifications of this conversion that refused it, oldest first (ONNX INT8: the
    #: sensitivity pass's escalation, agent.models.sensitivity), each ``attempt_record``'s dict
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def next_steps(self) -> list[str]:
        """What is likely to make a refused conversion pass, by precision and failing metric."""
        if self.passed:
            return []
        failed = {f.partition(" = ")[0].partition(".")[0] for f in self.failures}
        steps = []
        if self.positions < MIN_POSITIONS:
            steps.append(
                f"verify on more positions (--verify-positions {MIN_POSITIONS}): a p99 of few is noisy"
            )
        if self.precision == "int8":
            if failed & {"winrate_abs_error", "lead_abs_error", "score_abs_error", "ownership_abs_error"}:
                steps.append(
                    "keep more layers in float: --keep-float with the value head and the costliest "
                    "units of the manifest's int8_sensitivity (without --keep-float the sensitivity "
                    "pass chooses them)"
                )
            if failed & {"policy_top1_agreement", "policy_kl"}:
                steps.append("keep the policy head in float (add policy_head to --keep-float)")
            steps.append(
                "calibrate on more positions (--calibration-positions 512) or on games like the ones "
                "this network will see (--calibration SGF_FOLDER)"
            )
            steps.append("or use --precision fp16 (GPU, ARM) / fp32, which pass on every shared network")
        elif self.precision == "fp16":
            steps.append("use --precision fp32 on this device (its FP16 arithmetic is not accurate enough)")
        else:
            steps.append(
                "FP32 should agree to rounding: the conversion is broken; rerun with --verbose and report it"
            )
        return steps

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"positions": self.positions}
        out.update(self.metrics)
        out["thresholds"] = {k: [op, v] for k, (op, v) in self.thresholds.items()}
        out["failures"] = list(self.failures)
        out["passed"] = self.passed
        if self.precision:
            out["precision"] = self.precision
        if self.attempts:
            out["attempts"] = [dict(a) for a in self.attempts]
        if not self.passed:
            out["next_steps"] = self.next_steps()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VerifyReport:
        """The report as a manifest or a refusal record stores it."""
        skip = {
            "positions",
            "thresholds",
            "failures",
            "passed",
            "source",
            "forced",
            "precision",
            "next_steps",
            "attempts",
        }
        return cls(
            positions=int(data.get("positions", 0)),
            metrics={k: v for k, v in data.items() if k not in skip},
            thresholds={k: (str(op), float(val)) for k, (op, val) in data.get("thresholds", {}).items()},
            failures=list(data.get("failures", [])),
            precision=str(data.get("precision", "")),
            attempts=[dict(a) for a in data.get("attempts", [])],
        )

    def summary(self) -> str:
        m = self.metrics
        earlier = "".join(
            f"attempt {i + 1} (refused): {a.get('positions', '?')} positions ({a.get('source', '?')}), "
            f"{a.get('float_units', '?')} float units: winrate |err| p99 {a.get('winrate_p99', 0.0):.5f}, "
            f"lead |err| p99 {a.get('lead_p99', 0.0):.4f}, top-1 {a.get('top1', 0.0):.4f}\n"
            for i, a in enumerate(self.attempts)
        )
        return (
            earlier
            + (
                f"{self.positions} positions: winrate |err| p99 {m['winrate_abs_error']['p99']:.5f}, "
                f"lead |err| p99 {m['lead_abs_error']['p99']:.4f}, policy KL mean {m['policy_kl']['mean']:.5f}, "
                f"top-1 {m['policy_top1_agreement']:.4f}, "
                f"ownership |err| p99 {m['ownership_abs_error']['p99']:.5f}"
                f" -> {'PASSED' if self.passed else 'FAILED: ' + '; '.join(self.failures)}"
            )
            + "".join(f"\n  next: {step}" for step in self.next_steps())
        )

    def raise_if_failed(self, what: str) -> None:
        if not self.passed:
            raise VerificationFailed(f"{what} failed verification: {'; '.join(self.failures)}")


def attempt_record(report: VerifyReport, source: str, float_units: int | None = None) -> dict[str, Any]:
    """What :attr:`VerifyReport.attempts` keeps of a refused verification: its sample, headline
    errors, failures and how many float units the graph had."""
    m = report.metrics
    return {
        "positions": report.positions,
        "source": source,
        "float_units": float_units,
        "winrate_p99": round(float(m["winrate_abs_error"]["p99"]), 5),
        "lead_p99": round(float(m["lead_abs_error"]["p99"]), 4),
        "top1": round(float(m["policy_top1_agreement"]), 4),
        "policy_kl_mean": round(float(m["policy_kl"]["mean"]), 6),
        "failures": list(report.failures),
    }


def thresholds_for(precision: str, overrides: Mapping[str, Threshold] | None = None) -> dict[str, Threshold]:
    result = dict(DEFAULT_THRESHOLDS.get(precision, DEFAULT_THRESHOLDS["int8"]))
    result.update(overrides or {})
    return result


def _stats(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "p99": float(np.percentile(v, 99)), "max": float(v.max())}


def _value_terms(raw: NNOutputs, params: PostProcessParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = raw.value.astype(np.float64)
    e = np.exp(v - v.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    winrate = 0.5 * (1.0 + p[:, 0] - p[:, 1])
    sv = raw.score_value.astype(np.float64)
    score = sv[:, 0] * params.score_mean_multiplier
    lead = sv[:, 2] * params.lead_multiplier if sv.shape[1] > 2 else score
    return winrate, lead, score


def _board_size(spatial_row: np.ndarray) -> tuple[int, int]:
    mask = spatial_row[0] > 0.5
    return int(mask.any(axis=0).sum()), int(mask.any(axis=1).sum())


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    return z - math.log(float(np.exp(z).sum()))


def compare_outputs(
    ref: NNOutputs, conv: NNOutputs, positions: PositionSet, params: PostProcessParams
) -> dict[str, Any]:
    """The metric block of a report from already evaluated outputs (row i = position i)."""
    wr_r, lead_r, score_r = _value_terms(ref, params)
    wr_c, lead_c, score_c = _value_terms(conv, params)
    h, w = positions.spatial.shape[2:]
    kls, agree, own_err = [], 0, []
    for i in range(len(positions)):
        bx, by = _board_size(positions.spatial[i])
        legal = legal_mask_from_features(positions.spatial[i], positions.global_[i], bx, by)
        logits = []
        for out in (ref, conv):
            board = out.policy[i, 0].reshape(h, w)[:by, :bx].reshape(-1)
            z = np.append(board, out.policy_pass[i, 0]).astype(np.float64)
            logits.append(_log_softmax(z[legal]))
        lp_r, lp_c = logits
        kls.append(float(np.sum(np.exp(lp_r) * (lp_r - lp_c))))
        agree += int(np.argmax(lp_r) == np.argmax(lp_c))
        own_r = np.tanh(ref.ownership[i].reshape(h, w)[:by, :bx].astype(np.float64))
        own_c = np.tanh(conv.ownership[i].reshape(h, w)[:by, :bx].astype(np.float64))
        own_err.append(np.abs(own_r - own_c).reshape(-1))
    return {
        "winrate_abs_error": _stats(np.abs(wr_r - wr_c)),
        "lead_abs_error": _stats(np.abs(lead_r - lead_c)),
        "score_abs_error": _stats(np.abs(score_r - score_c)),
        "policy_kl": _stats(np.maximum(np.array(kls), 0.0)),
        "policy_top1_agreement": agree / max(len(positions), 1),
        "ownership_abs_error": _stats(np.concatenate(own_err)),
    }


def check(metrics: Mapping[str, Any], thresholds: Mapping[str, Threshold]) -> list[str]:
    """Threshold failures as readable strings (empty when all hold)."""
    failures = []
    for key, (op, limit) in thresholds.items():
        metric, _, stat = key.partition(".")
        value = metrics[metric][stat] if stat else metrics[metric]
        if op not in _OPS:
            raise ValueError(f"threshold {key}: unknown comparison {op!r}")
        if not _OPS[op](float(value), float(limit)):
            failures.append(f"{key} = {float(value):.6g}, needs {op} {limit:g}")
    return failures


def evaluate_all(
    net: NeuralNet, positions: PositionSet, batch: int = 8, progress: Callable[[int], None] | None = None
) -> NNOutputs:
    parts = []
    for b in positions.batches(batch):
        parts.append(net.evaluate(b))
        if progress:
            progress(b.batch_size)
    return NNOutputs(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in NNOutputs.__dataclass_fields__)
    )


def verify(
    converted: NeuralNet,
    reference: NeuralNet,
    positions: PositionSet,
    params: PostProcessParams,
    *,
    precision: str,
    thresholds: Mapping[str, Threshold] | None = None,
    batch: int = 8,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Run both networks on ``positions`` and build the report (see the module docstring)."""
    if len(positions) < MIN_POSITIONS and precision != "fp32":  # FP32 differs by rounding only
        logger.warning("verifying on %d positions (fewer than the default %d)", len(positions), MIN_POSITIONS)
    ref = evaluate_all(reference, positions, batch, progress)
    conv = evaluate_all(converted, positions, batch, progress)
    metrics = compare_outputs(ref, conv, positions, params)
    th = thresholds_for(precision, thresholds)
    report = VerifyReport(len(positions), metrics, th, check(metrics, th), precision)
    logger.info("verify %s: %s", precision, report.summary())
    return report
