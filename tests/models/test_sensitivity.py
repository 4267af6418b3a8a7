"""The INT8 sensitivity pass on g170-b6c96 (9x9 buffer to stay fast): units, float copies of the
QDQ graph, the choice of float units, and the refusal text of verify."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from edge_fixtures import model_file

from agent.backends.onnx import quantize
from agent.backends.onnx.builder import OnnxBuildOptions, build_onnx
from agent.backends.onnx.runtime import OnnxNet
from agent.backends.onnx.sensitivity import quantizable_nodes, quantization_units, with_float_nodes
from agent.models.positions import positions_from_selfplay
from agent.models.sensitivity import is_transformer, margin_thresholds, run_pass, unit_cost
from agent.models.verify import check, compare_outputs, evaluate_all, thresholds_for
from agent.network.reader import read_network


@pytest.fixture(scope="module")
def b6(models_dir: Path) -> dict[str, Any]:
    net = read_network(model_file(models_dir, "b6c96"))
    fp32 = build_onnx(net, OnnxBuildOptions(board_x=9, board_y=9))
    ref = OnnxNet(fp32.SerializeToString(), intra_op_threads=1)
    cal = positions_from_selfplay(ref, 16, seed=7)
    held = positions_from_selfplay(ref, 40, seed=4242)
    quant = quantize.to_int8_static(fp32, cal, method="percentile", keep_float=())
    return {"net": net, "fp32": fp32, "ref": ref, "quant": quant, "held": held}


def test_quantization_units__b6c96_partitions_its_layers(b6: dict[str, Any]) -> None:
    units = quantization_units(b6["fp32"])
    assert list(units) == ["initial", "policy_head", "value_head", *(f"block{i}" for i in range(6))]
    assert units["initial"] == ["conv1/Conv", "ginputw/MatMul"]
    assert units["block2"] == ["rconv3/w1a/Conv", "rconv3/w1b/Conv", "rconv3/w1r/MatMul", "rconv3/w2/Conv"]
    assert not is_transformer(b6["fp32"])  # so convert's INT8 default runs the pass on it
    flat = [n for nodes in units.values() for n in nodes]
    assert sorted(flat) == sorted(quantizable_nodes(b6["fp32"])) and len(flat) == len(set(flat)) == 28


def test_with_float_nodes__all_float_is_fp32_exactly_and_none_float_is_int8(b6: dict[str, Any]) -> None:
    fp32, quant, held = b6["fp32"], b6["quant"], b6["held"]
    batch = next(iter(held.batches(16)))
    ref = b6["ref"].evaluate(batch)
    back = with_float_nodes(quant, fp32, quantizable_nodes(fp32))
    assert {n.op_type for n in back.graph.node}.isdisjoint({"QuantizeLinear", "DequantizeLinear"})
    out = OnnxNet(back.SerializeToString(), intra_op_threads=1).evaluate(batch)
    assert np.array_equal(out.value, ref.value) and np.array_equal(out.policy, ref.policy)
    int8 = OnnxNet(with_float_nodes(quant, fp32, []).SerializeToString(), intra_op_threads=1).evaluate(batch)
    assert 0.005 < float(np.abs(int8.value - ref.value).max()) < 1.0


def test_run_pass__keeps_the_costliest_float_until_the_margin_holds(b6: dict[str, Any]) -> None:
    fp32, held, params = b6["fp32"], b6["held"], b6["net"].postprocess
    chosen = run_pass(b6["quant"], fp32, held, params, threads=1)
    report, graph = chosen.report, chosen.graph()
    assert report.positions == 40 and set(report.alone) == set(report.units)
    assert report.steps[0]["action"] == "all INT8" and report.steps[0]["passes"] is False
    assert report.passed and report.float_units and set(report.float_units) < set(report.units)
    # every unit kept float costs more alone than the cheapest one left in INT8
    cost = {u: a["cost"] for u, a in report.alone.items()}
    left = [u for u in report.units if u not in report.float_units]
    assert min(cost[u] for u in report.float_units) > min(cost[u] for u in left)
    assert {"value_head", "block5"} <= set(report.float_units)  # b6c96's costliest units
    assert report.float_units == sorted(report.float_units, key=lambda u: -cost[u])
    # the graph returned is the one the last passing step measured, and it passes with margin
    net = OnnxNet(graph.SerializeToString(), intra_op_threads=1)
    metrics = compare_outputs(evaluate_all(b6["ref"], held), evaluate_all(net, held), held, params)
    assert check(metrics, margin_thresholds(thresholds_for("int8"))) == []
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["katago.int8_float_groups"].split(",") == report.float_units
    assert report.to_json()["float_units"] == report.float_units
    assert report.summary().splitlines()[1].startswith(f"  {report.float_units[0]}: INT8 alone costs")


def test_unit_cost__sums_the_share_of_each_limit() -> None:
    metrics = {
        "winrate_abs_error": {"mean": 0.003, "p99": 0.02},
        "lead_abs_error": {"mean": 0.2, "p99": 0.9},
        "policy_top1_agreement": 0.99,
    }
    # 0.003 / 0.03 + 0.2 / 1.0 + (1 - 0.99) / (1 - 0.95)
    assert unit_cost(metrics, thresholds_for("int8")) == pytest.approx(0.1 + 0.2 + 0.2)
    assert margin_thresholds(thresholds_for("int8"), 0.8) == {
        "winrate_abs_error.p99": ("<", pytest.approx(0.024)),
        "lead_abs_error.p99": ("<", 0.8),
        "policy_top1_agreement": (">=", pytest.approx(0.96)),
    }


def test_verify_report__refusal_names_metric_value_limit_and_next_step(b6: dict[str, Any]) -> None:
    from agent.models.verify import verify

    quant = with_float_nodes(b6["quant"], b6["fp32"], [])
    net = OnnxNet(quant.SerializeToString(), intra_op_threads=1)
    report = verify(net, b6["ref"], b6["held"], b6["net"].postprocess, precision="int8")
    assert not report.passed
    text = report.summary()
    failure = report.failures[0]
    metric, _, rest = failure.partition(" = ")
    assert metric in {"winrate_abs_error.p99", "lead_abs_error.p99", "policy_top1_agreement"}
    assert ", needs " in rest and failure in text
    assert "next: verify on more positions" in text  # 40 < 200
    assert "next: keep more layers in float" in text or "next: keep the policy head in float" in text
    assert "next: calibrate on more positions" in text
    assert report.to_json()["next_steps"] == report.next_steps() and report.to_json()["precision"] == "int8"


def test_onnx_metadata_roundtrip_of_report(b6: dict[str, Any]) -> None:
    from agent.models.sensitivity import manifest_entry

    assert manifest_entry(b6["fp32"].SerializeToString()) is None
    graph = onnx.ModelProto()
    graph.CopyFrom(b6["fp32"])
    onnx.helper.set_model_props(graph, {"katago.int8_sensitivity": '{"float_units": ["value_head"]}'})
    assert manifest_entry(graph.SerializeToString()) == {"float_units": ["value_head"]}
