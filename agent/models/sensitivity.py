"""The INT8 sensitivity pass: which layers stay in float, chosen by measurement.

Static INT8 with every quantizable layer in INT8 misses the verify thresholds on our networks;
a fixed list of float layers (``INT8_FLOAT_GROUPS``) passes on some position samples and fails
on others. This pass decides per network, on held-out positions (neither calibration nor
verification positions):

1. quantize every unit once (:func:`agent.backends.onnx.sensitivity.quantization_units`: the
   initial conv, each head, each residual block, and in transformer nets each kind of layer
   across the blocks), calibrated and GPTQ-rounded as usual;
2. **measure each unit alone**: the graph with only that unit in INT8 (all others float, made by
   rewiring the QDQ graph, no second calibration) against FP32 on the held-out positions; its
   *cost* is ``winrate mean / limit + lead mean / limit + (1 - top-1) / (1 - top-1 limit)`` with
   the verify limits (means, not p99s: steadier on ~100 positions);
3. **keep the costliest units float** one at a time, re-measuring the whole graph each time,
   until every verify threshold holds with a margin (errors at most ``margin`` x their limit,
   top-1 at least ``1 - margin x (1 - limit)``), then try to quantize again each float unit,
   cheapest first, keeping it INT8 when the margin still holds (as few float layers as possible).

The result (:class:`SensitivityReport`) lists every unit's measured cost and the steps taken;
the manifest and the conversion report carry it.

Transformer nets (units per block and kind of layer) start from a list of float units
(:func:`agent.backends.onnx.sensitivity.start_units`: the fixed ``INT8_FLOAT_GROUPS``, chosen by
measurement on b10c384) instead of every layer in INT8: greedy from all-INT8 kept 14 of 17 block
units of b7c96h3tfrs float (the errors of many small layers add up; the SwiGLU output projections
across all blocks are what matters). Steps 2 and 3 then run only when the start list misses the
margin, and only on the other units; units measured alone are the only ones quantized again.

**Verification-driven escalation** (:func:`escalate_units`, :class:`Int8Pass`): a graph the pass
built can still be refused by verification, whose positions are another sample: the errors of
b10c384 have a heavy tail (lead p99 0.54-0.65 on the held-out positions, 1.44-1.63 on the
verification positions, with the same float units). Then the refused verification sample has been
used and becomes part of the pass's sample: the units still in INT8 are measured alone on the
held-out positions where the pass has not measured them yet (their costs, step 2), and the
costliest are kept float one at a time, at least one, until the margin holds on the held-out
positions and the refused sample together (400; an earlier refused sample held the margin with
the units chosen on it, which only grow), leaving at least one unit INT8 (all float is the FP32
graph: the conversion is refused instead); the graph is verified again on a fresh sample (another
seed, disjoint from every position used to choose), at most :data:`ESCALATIONS` times. Every
attempt is in the report (``escalations``), the manifest and the refusal record. A graph that
passes at once is exactly the one the pass built before escalation existed.

Status: the ``convert`` default of ONNX static INT8 on every net (docs/conversion.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from agent.backends.base import NNOutputs
from agent.backends.onnx.runtime import OnnxNet
from agent.backends.onnx.sensitivity import is_transformer as is_transformer
from agent.backends.onnx.sensitivity import quantization_units, start_units, with_float_nodes
from agent.models.verify import Threshold, check, compare_outputs, evaluate_all, thresholds_for
from agent.network.model import PostProcessParams
from agent.network.tensors import PositionSet
from agent.records import field_dict

if TYPE_CHECKING:
    from agent.backends.base import NeuralNet
    from agent.models.pipeline import ConvertJob

logger = logging.getLogger(__name__)

MARGIN = 0.8
HELD_OUT_POSITIONS = 200  # as many as verification: its p99 is the same order statistic
HELD_OUT_SEED = 4242
#: at most this many verification-driven escalations of one conversion (module docstring)
ESCALATIONS = 2
METADATA_KEY = "katago.int8_sensitivity"
Step = Callable[[int, int], None]


class _Ticks:
    """Counts measurements and reports them to ``progress`` (done, at least ``total``)."""

    def __init__(self, total: int, progress: Step | None) -> None:
        self.total, self.progress, self.done = total, progress, 0

    def __call__(self) -> None:
        self.done += 1
        if self.progress:
            self.progress(self.done, max(self.total, self.done))


def unit_cost(metrics: Mapping[str, Any], thresholds: Mapping[str, Threshold]) -> float:
    """How much of the verify limits a graph uses, from mean errors (module docstring, step 2)."""
    cost = 0.0
    for key, (op, limit) in thresholds.items():
        metric, _, _stat = key.partition(".")
        value = metrics[metric]["mean"] if isinstance(metrics[metric], dict) else metrics[metric]
        cost += (1.0 - value) / max(1.0 - limit, 1e-9) if op.startswith(">") else value / max(limit, 1e-12)
    return cost


def margin_thresholds(thresholds: Mapping[str, Threshold], margin: float = MARGIN) -> dict[str, Threshold]:
    """The verify thresholds tightened to ``margin`` of their room (errors x margin, agreement
    1 - margin x (1 - limit))."""
    out = {}
    for key, (op, limit) in thresholds.items():
        out[key] = (op, 1.0 - margin * (1.0 - limit)) if op.startswith(">") else (op, margin * limit)
    return out


def _headline(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        "winrate_p99": round(float(metrics["winrate_abs_error"]["p99"]), 5),
        "lead_p99": round(float(metrics["lead_abs_error"]["p99"]), 4),
        "top1": round(float(metrics["policy_top1_agreement"]), 4),
        "policy_kl_mean": round(float(metrics["policy_kl"]["mean"]), 6),
    }


@dataclass
class SensitivityReport:
    positions: int
    units: dict[str, int]  # unit -> quantizable layers in it
    all_int8: dict[str, float]  # headline metrics with every unit in INT8
    alone: dict[str, dict[str, float]]  # unit -> headline metrics + cost with only it in INT8
    steps: list[dict[str, Any]] = field(default_factory=list)
    float_units: list[str] = field(default_factory=list)
    passed: bool = False
    margin: float = MARGIN
    start: list[str] = field(default_factory=list)  # units float from the start (not measured alone)
    escalations: list[dict[str, Any]] = field(default_factory=list)  # escalate_units' records

    def to_json(self) -> dict[str, Any]:
        # no escalation: the same JSON (and graph metadata) as before escalation existed
        return field_dict(self, skip=() if self.escalations else ("escalations",))

    def summary(self) -> str:
        """One line per float unit with its measured cost (why it stayed float)."""
        if not self.float_units:
            return f"sensitivity pass: every layer in INT8 ({self.positions} held-out positions)"
        lines = [
            f"sensitivity pass ({self.positions} held-out positions): {len(self.float_units)} of "
            f"{len(self.units)} units kept in float"
            + ("" if self.passed else " (margin not reached with every unit float)")
        ]
        prior = [u for u in self.float_units if u not in self.alone]
        if prior:
            lines.append(f"  {len(prior)} units float from the start list: {', '.join(prior)}")
        for unit in [u for u in self.float_units if u in self.alone]:
            a = self.alone[unit]
            lines.append(
                f"  {unit}: INT8 alone costs {a['cost']:.3f} (winrate p99 {a['winrate_p99']:.4f}, "
                f"lead p99 {a['lead_p99']:.3f}, top-1 {a['top1']:.3f})"
            )
        final = [s for s in self.steps if sorted(s["float"]) == sorted(self.float_units)]
        every = self.all_int8
        if final:
            f = final[-1]
            lines.append(
                f"  held-out error with them float: winrate p99 {f['winrate_p99']:.4f}, lead p99 "
                f"{f['lead_p99']:.3f}, top-1 {f['top1']:.3f} (every layer INT8: {every['winrate_p99']:.4f}, "
                f"{every['lead_p99']:.3f}, {every['top1']:.3f})"
            )
        for i, e in enumerate(self.escalations):
            last = e["steps"][-1] if e["steps"] else None
            lines.append(
                f"  escalation {i + 1} (verification refused: {e['refused'].get('winrate_p99', 0.0):.4f} / "
                f"{e['refused'].get('lead_p99', 0.0):.3f} / {e['refused'].get('top1', 0.0):.3f}): "
                f"{', '.join(e['added']) or 'no unit left in INT8'} kept float"
                + (
                    f"; on {e['positions']} positions (held-out + refused): winrate p99 "
                    f"{last['winrate_p99']:.4f}, lead p99 {last['lead_p99']:.3f}, top-1 {last['top1']:.3f}"
                    if last
                    else ""
                )
            )
        return "\n".join(lines)


class _Judge:
    """Evaluates QDQ variants against the FP32 outputs on the held-out positions."""

    def __init__(
        self,
        quant: onnx.ModelProto,
        fp32: onnx.ModelProto,
        positions: PositionSet,
        reference: NNOutputs,
        params: PostProcessParams,
        threads: int | None,
    ) -> None:
        self.quant, self.fp32, self.positions = quant, fp32, positions
        self.reference, self.params, self.threads = reference, params, threads
        self.runs = 0

    def graph(self, float_nodes: list[str]) -> onnx.ModelProto:
        return with_float_nodes(self.quant, self.fp32, float_nodes)

    def metrics(self, float_nodes: list[str]) -> dict[str, Any]:
        self.runs += 1
        net = OnnxNet(
            self.graph(float_nodes).SerializeToString(), intra_op_threads=self.threads, warmup=False
        )
        try:
            out = evaluate_all(net, self.positions)
        finally:
            net.close()
        return compare_outputs(self.reference, out, self.positions, self.params)


def choose_units(
    units: Mapping[str, int],
    measure: Callable[[list[str]], dict[str, Any]],
    positions: int,
    *,
    precision_thresholds: Mapping[str, Threshold] | None = None,
    margin: float = MARGIN,
    progress: Step | None = None,
    alone: Callable[[str], dict[str, Any]] | None = None,
    start: Sequence[str] = (),
) -> SensitivityReport:
    """Steps 2 and 3 of the pass (module docstring) for any runtime: ``units`` maps each unit to
    its layer count (graph order), ``measure(float_units)`` gives the metrics of the INT8 model
    with those units in float against FP32 on the ``positions`` held-out positions, ``alone(unit)``
    those with only ``unit`` in INT8 (default: every other unit float); ``start``: units float
    from the beginning (then only the others are measured alone, and only if needed). Returns the
    report, whose ``float_units`` the model should keep in float."""
    thresholds = thresholds_for("int8", precision_thresholds)
    target = margin_thresholds(thresholds, margin)
    only = alone or (lambda unit: measure([u for u in units if u != unit]))
    tick = _Ticks(len(units) + 1, progress)

    base = measure([])
    tick()
    costs: dict[str, dict[str, float]] = {}
    report = SensitivityReport(positions, dict(units), _headline(base), costs)
    report.margin = margin
    report.start = [u for u in units if u in set(start)]

    def attempt(float_units: list[str], action: str) -> bool:
        m = base if not float_units else measure(float_units)
        ok = not check(m, target)
        report.steps.append({"action": action, "float": list(float_units), **_headline(m), "passes": ok})
        logger.info("sensitivity: %s -> float %s: %s", action, float_units, "passes" if ok else "fails")
        if progress:
            progress(tick.done, len(units) + 1 + len(report.steps))
        return ok

    chosen = list(report.start)
    ok = attempt(chosen, "start list float" if chosen else "all INT8")
    if not ok:
        for unit in [u for u in units if u not in chosen]:
            m = only(unit)
            costs[unit] = {**_headline(m), "cost": round(unit_cost(m, thresholds), 4)}
            tick()
    order = sorted(costs, key=lambda u: costs[u]["cost"], reverse=True)
    for unit in order:
        if ok:
            break
        chosen.append(unit)
        ok = attempt(chosen, f"keep {unit} float")
    if ok:
        for unit in sorted([u for u in chosen if u in costs], key=lambda u: costs[u]["cost"]):
            trial = [u for u in chosen if u != unit]
            if trial != chosen and attempt(trial, f"quantize {unit} again"):
                chosen = trial
    report.float_units = [u for u in report.start if u in chosen] + [u for u in order if u in chosen]
    report.passed = ok
    logger.info("%s", report.summary())
    return report


def escalate_units(
    report: SensitivityReport,
    measure: Callable[[list[str]], dict[str, Any]],
    alone: Callable[[str], dict[str, Any]],
    positions: int,
    refused: Mapping[str, Any],
    *,
    precision_thresholds: Mapping[str, Threshold] | None = None,
    progress: Step | None = None,
) -> dict[str, Any]:
    """One verification-driven escalation (module docstring) of ``report``'s choice, in place:
    the units still in INT8 without a measured cost are measured with ``alone(unit)`` (only that
    unit in INT8, on the held-out positions); then the costliest are added to
    ``report.float_units`` one at a time, at least one, until ``measure(float_units)`` (the whole
    graph on the ``positions`` held-out + refused verification positions) holds the margin.
    ``refused``: the refused verification's headline (:func:`agent.models.verify.attempt_record`).
    Returns the record appended to ``report.escalations``; at least one unit stays INT8 (with
    every unit float the graph is FP32's): ``passes`` is False when the margin does not hold
    before that."""
    thresholds = thresholds_for("int8", precision_thresholds)
    target = margin_thresholds(thresholds, report.margin)
    rest = [u for u in report.units if u not in set(report.float_units)]
    missing = [u for u in rest if u not in report.alone]
    tick = _Ticks(len(missing) + len(rest), progress)

    for unit in missing:
        m = alone(unit)
        report.alone[unit] = {**_headline(m), "cost": round(unit_cost(m, thresholds), 4)}
        logger.info("sensitivity escalation: %s alone costs %.3f", unit, report.alone[unit]["cost"])
        tick()
    order = sorted(rest, key=lambda u: report.alone[u]["cost"], reverse=True)
    record: dict[str, Any] = {
        "refused": dict(refused),
        "positions": positions,
        "added": [],
        "steps": [],
        "passes": False,
    }
    chosen = list(report.float_units)
    # at least one unit stays INT8: with every unit float the graph is the FP32 graph, which
    # passes trivially and is not an INT8 conversion worth having
    for unit in order[: max(len(order) - 1, 0)]:
        chosen.append(unit)
        m = measure(chosen)
        ok = not check(m, target)
        record["steps"].append(
            {"action": f"keep {unit} float", "float_units": len(chosen), **_headline(m), "passes": ok}
        )
        step = record["steps"][-1]
        logger.info(
            "sensitivity escalation: keep %s float (%d units float) on %d positions: winrate p99 %.4f, "
            "lead p99 %.3f, top-1 %.3f: %s",
            unit,
            len(chosen),
            positions,
            step["winrate_p99"],
            step["lead_p99"],
            step["top1"],
            "passes" if ok else "fails",
        )
        tick()
        if ok:
            record["passes"] = True
            break
    record["added"] = chosen[len(report.float_units) :]
    report.float_units = chosen
    report.escalations.append(record)
    logger.info("%s", report.summary())
    return record


def concat_positions(a: PositionSet, b: PositionSet) -> PositionSet:
    """``a`` then ``b`` as one set."""
    return PositionSet(
        np.concatenate([a.spatial, b.spatial]),
        np.concatenate([a.global_, b.global_]),
        (*a.ids, *b.ids),
        f"{a.source} + {b.source}",
    )


def _concat_outputs(a: NNOutputs, b: NNOutputs) -> NNOutputs:
    return NNOutputs(
        *(np.concatenate([getattr(a, f), getattr(b, f)]) for f in NNOutputs.__dataclass_fields__)
    )


class Int8Pass:
    """The pass's result with what escalation needs: the all-INT8 QDQ graph, the FP32 graph, the
    held-out positions and their FP32 outputs (:func:`run_pass`)."""

    def __init__(
        self,
        quant: onnx.ModelProto,
        fp32: onnx.ModelProto,
        held: PositionSet,
        params: PostProcessParams,
        report: SensitivityReport,
        judge: _Judge,
        units: dict[str, list[str]],
        *,
        thresholds: Mapping[str, Threshold] | None = None,
        finish: Callable[[onnx.ModelProto], object] | None = None,
    ) -> None:
        self.quant, self.fp32, self.held, self.params = quant, fp32, held, params
        self.report, self.judge, self.units = report, judge, units
        self.thresholds = dict(thresholds or {})
        self.finish = finish

    def nodes_of(self, float_units: list[str]) -> list[str]:
        return list(dict.fromkeys(n for u in float_units for n in self.units[u]))

    def graph(self) -> onnx.ModelProto:
        """The QDQ graph with the report's float units in float and the report in its metadata."""
        graph = self.judge.graph(self.nodes_of(self.report.float_units))
        props = {p.key: p.value for p in graph.metadata_props}
        props["katago.int8_float_groups"] = ",".join(self.report.float_units)
        props[METADATA_KEY] = json.dumps(self.report.to_json(), separators=(",", ":"))
        onnx.helper.set_model_props(graph, props)
        if self.finish is not None:
            self.finish(graph)
        return graph

    def data(self) -> bytes:
        return self.graph().SerializeToString()

    def escalate(
        self, refused: PositionSet, verification: Mapping[str, Any], *, progress: Step | None = None
    ) -> bool:
        """One escalation (:func:`escalate_units`) after verification refused the graph on
        ``refused``, choosing on the held-out positions and ``refused`` (an earlier refused sample
        already holds the margin with the float units chosen on it, which only grow); False when
        the margin does not hold with all units but one float (then the conversion is refused)."""
        every = list(dict.fromkeys(n for nodes in self.units.values() for n in nodes))
        ref_net = OnnxNet(self.fp32.SerializeToString(), intra_op_threads=self.judge.threads, warmup=False)
        try:
            expected = evaluate_all(ref_net, refused)
        finally:
            ref_net.close()
        both = _Judge(
            self.quant,
            self.fp32,
            concat_positions(self.held, refused),
            _concat_outputs(self.judge.reference, expected),
            self.params,
            self.judge.threads,
        )
        record = escalate_units(
            self.report,
            lambda float_units: both.metrics(self.nodes_of(float_units)),
            lambda unit: self.judge.metrics([n for n in every if n not in set(self.units[unit])]),
            len(both.positions),
            verification,
            precision_thresholds=self.thresholds,
            progress=progress,
        )
        return bool(record["passes"])


def run_pass(
    quant: onnx.ModelProto,
    fp32: onnx.ModelProto,
    positions: PositionSet,
    params: PostProcessParams,
    *,
    precision_thresholds: Mapping[str, Threshold] | None = None,
    margin: float = MARGIN,
    threads: int | None = None,
    progress: Step | None = None,
    start: Sequence[str] = (),
    finish: Callable[[onnx.ModelProto], object] | None = None,
) -> Int8Pass:
    """Run the pass (module docstring) on the all-INT8 static graph ``quant`` made from ``fp32``;
    ``finish`` is applied to every graph it hands out (``Int8Pass.graph``)."""
    units = quantization_units(fp32)
    every = list(dict.fromkeys(n for nodes in units.values() for n in nodes))
    ref_net = OnnxNet(fp32.SerializeToString(), intra_op_threads=threads, warmup=False)
    try:
        reference = evaluate_all(ref_net, positions)
    finally:
        ref_net.close()
    judge = _Judge(quant, fp32, positions, reference, params, threads)

    def nodes_of(float_units: list[str]) -> list[str]:
        return list(dict.fromkeys(n for u in float_units for n in units[u]))

    report = choose_units(
        {u: len(n) for u, n in units.items()},
        lambda float_units: judge.metrics(nodes_of(float_units)),
        len(positions),
        precision_thresholds=precision_thresholds,
        margin=margin,
        progress=progress,
        alone=lambda unit: judge.metrics([n for n in every if n not in set(units[unit])]),
        start=start,
    )
    return Int8Pass(
        quant,
        fp32,
        positions,
        params,
        report,
        judge,
        units,
        thresholds=precision_thresholds,
        finish=finish,
    )


def applies(job: ConvertJob) -> bool:
    """The pass chooses the float layers of ONNX static INT8 unless ``--keep-float`` names them
    (or SmoothQuant, which needs them before calibration, is on); transformer nets start from
    :data:`INT8_FLOAT_GROUPS` (module docstring)."""
    return (
        job.target == "onnx"
        and job.precision == "int8"
        and job.int8_mode == "static"
        and job.keep_float is None
        and job.smooth_alpha <= 0
    )


def held_out_positions(
    job: ConvertJob, calibration: PositionSet, reference: NeuralNet, verify_seed: int
) -> PositionSet:
    """Positions for the pass that are neither calibration nor verification positions (as many as
    verification uses, at most 200): from the job's SGF source minus both samples, else self-play
    with a seed of its own."""
    from agent.models.positions import positions_from_selfplay, positions_from_sgf

    count = min(HELD_OUT_POSITIONS, job.verify_positions)
    source = job.verify_source or job.calibration
    if source is None:
        return positions_from_selfplay(reference, count, seed=HELD_OUT_SEED)
    verify = positions_from_sgf(
        source,
        job.verify_positions,
        nn_x=job.board,
        nn_y=job.board,
        seed=verify_seed,
        exclude=calibration.ids,
    )
    return positions_from_sgf(
        source,
        count,
        nn_x=job.board,
        nn_y=job.board,
        seed=HELD_OUT_SEED,
        exclude=(*calibration.ids, *verify.ids),
    )


def int8_with_sensitivity_pass(
    job: ConvertJob,
    fp32: onnx.ModelProto,
    calibration: PositionSet,
    reference: NeuralNet,
    progress: Callable[[str, int], Any],
    verify_seed: int,
) -> Int8Pass:
    """Static INT8 of ``fp32`` with the float units chosen by the pass (the ``convert`` default
    when no ``--keep-float`` is given; transformer nets start from
    :data:`~agent.backends.onnx.quantize.INT8_FLOAT_GROUPS` in float); ``.data()`` is the graph,
    the report in its metadata, ``.escalate`` keeps more float when verification refuses it."""
    from agent.backends.onnx import quantize

    with progress(f"INT8 calibration ({job.calibration_method}), every layer", len(calibration)) as prog:
        quant = quantize.to_int8_static(
            fp32,
            calibration,
            method=job.calibration_method,
            keep_float=(),
            weight_rounding=job.weight_rounding,
            progress=prog,
        )
    held = held_out_positions(job, calibration, reference, verify_seed)
    params = getattr(reference, "postprocess_params")  # noqa: B009 - OnnxNet's, not on NeuralNet
    with progress("INT8 sensitivity pass", len(quantization_units(fp32)) + 1) as prog:
        return run_pass(
            quant,
            fp32,
            held,
            params,
            precision_thresholds=job.thresholds,
            threads=job.threads or None,
            progress=prog,
            start=start_units(fp32),
            finish=quantize.finish_im2col,
        )


def summary_of(entry: dict[str, Any]) -> str:
    """:meth:`SensitivityReport.summary` of a report stored as JSON (manifest, metadata)."""
    known = {f for f in SensitivityReport.__dataclass_fields__}
    return SensitivityReport(**{k: v for k, v in entry.items() if k in known}).summary()


def manifest_entry(data: bytes) -> dict[str, Any] | None:
    """The pass's report stored in an ONNX graph's metadata, or None when it did not run."""
    model = onnx.load_from_string(data)
    props = {p.key: p.value for p in model.metadata_props}
    text = props.get(METADATA_KEY)
    result: dict[str, Any] | None = json.loads(text) if text else None
    return result
