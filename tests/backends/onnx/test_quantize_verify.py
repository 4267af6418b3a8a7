"""ONNX FP16 / INT8 conversions of g170-b6c96 and their verification reports.

The bounds below are the values measured on this network (docs/conversion.md) with some slack;
they pin down that FP16 is near-lossless and that INT8 is quantized for real but not broken.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from edge_fixtures import model_file

from agent.backends.onnx.builder import build_onnx
from agent.backends.onnx.quantize import (
    fp16_float_nodes,
    nodes_in_groups,
    to_fp16,
    to_int8_dynamic,
    to_int8_static,
)
from agent.backends.onnx.runtime import OnnxNet
from agent.errors import ConversionError
from agent.models.positions import PositionSet, positions_from_sgf
from agent.models.verify import check, compare_outputs, evaluate_all, thresholds_for, verify
from agent.network.model import Network
from agent.network.reader import read_network

REPORT_KEYS = {
    "positions",
    "winrate_abs_error",
    "lead_abs_error",
    "policy_kl",
    "policy_top1_agreement",
    "ownership_abs_error",
    "thresholds",
    "passed",
}


@cache
def _setup(path: Path, sgf: Path) -> tuple[Network, onnx.ModelProto, OnnxNet, PositionSet, PositionSet]:
    net = read_network(path)
    fp32 = build_onnx(net)
    cal = positions_from_sgf(sgf, 24, seed=7)
    ver = positions_from_sgf(sgf, 48, seed=11, exclude=cal.ids)
    return net, fp32, OnnxNet(fp32.SerializeToString(), intra_op_threads=2), cal, ver


def _b6(
    models_dir: Path, reference_dir: Path
) -> tuple[Network, onnx.ModelProto, OnnxNet, PositionSet, PositionSet]:
    return _setup(model_file(models_dir, "b6c96"), reference_dir / "sgf")


def test_verify__identical_networks_have_zero_error(models_dir: Path, reference_dir: Path) -> None:
    net, _, ref, _, ver = _b6(models_dir, reference_dir)
    report = verify(ref, ref, ver, net.postprocess, precision="fp32")
    data = report.to_json()
    assert set(data) >= REPORT_KEYS
    assert data["positions"] == 48 and data["passed"] is True
    assert data["winrate_abs_error"] == {"mean": 0.0, "p99": 0.0, "max": 0.0}
    assert data["policy_top1_agreement"] == 1.0
    assert data["policy_kl"]["max"] == 0.0


def test_verify__positions_exclude_the_calibration_set(models_dir: Path, reference_dir: Path) -> None:
    _, _, _, cal, ver = _b6(models_dir, reference_dir)
    assert not set(cal.ids) & set(ver.ids)
    assert all("#" in i and i.endswith(tuple("0123456789")) for i in ver.ids)


def test_verify__thresholds_fail_with_readable_reasons() -> None:
    metrics = {
        "winrate_abs_error": {"mean": 0.01, "p99": 0.05, "max": 0.1},
        "lead_abs_error": {"mean": 0.1, "p99": 0.5, "max": 2.0},
        "policy_top1_agreement": 0.9,
    }
    failures = check(metrics, thresholds_for("int8", {"lead_abs_error.max": ("<=", 1.5)}))
    assert failures == [
        "winrate_abs_error.p99 = 0.05, needs < 0.03",
        "policy_top1_agreement = 0.9, needs >= 0.95",
        "lead_abs_error.max = 2, needs <= 1.5",
    ]
    assert thresholds_for("fp16") == {
        "winrate_abs_error.p99": ("<", 0.01),
        "policy_top1_agreement": (">=", 0.99),
    }


def test_quantize__fp16_keeps_io_fp32_and_is_near_lossless(models_dir: Path, reference_dir: Path) -> None:
    net, fp32, ref, _, ver = _b6(models_dir, reference_dir)
    half = to_fp16(fp32)
    assert {i.type.tensor_type.elem_type for i in half.graph.input} == {onnx.TensorProto.FLOAT}
    assert {o.type.tensor_type.elem_type for o in half.graph.output} == {onnx.TensorProto.FLOAT}
    assert {p.key: p.value for p in half.metadata_props}["katago.precision"] == "fp16"
    kept = set(fp16_float_nodes(fp32))
    assert set(nodes_in_groups(fp32, ["policy_head", "value_head"])) <= kept
    inits = {i.name: i.data_type for i in half.graph.initializer}
    assert inits["rconv1/w1.w/fp16"] == onnx.TensorProto.FLOAT16  # trunk conv in half precision
    assert inits["v3/w.w"] == onnx.TensorProto.FLOAT  # value head kept FP32
    report = verify(OnnxNet(half.SerializeToString()), ref, ver, net.postprocess, precision="fp16")
    m = report.to_json()
    assert m["winrate_abs_error"]["p99"] < 0.005 and m["policy_top1_agreement"] >= 0.97
    assert 0 < m["ownership_abs_error"]["mean"] < 1e-3


def test_quantize__int8_static_is_per_channel_qdq_with_float_heads(
    models_dir: Path, reference_dir: Path
) -> None:
    net, fp32, ref, cal, ver = _b6(models_dir, reference_dir)
    q = to_int8_static(fp32, cal, method="minmax")
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") >= 12 and ops.count("DequantizeLinear") >= 30
    inits = {i.name: i for i in q.graph.initializer}
    w = onnx.numpy_helper.to_array(inits["rconv2/w1.w_quantized"])
    scale = onnx.numpy_helper.to_array(inits["rconv2/w1.w_scale"])
    assert w.dtype == np.int8 and scale.shape == (96,)  # one scale per output channel
    assert "v3/w.w" in inits and inits["v3/w.w"].data_type == onnx.TensorProto.FLOAT  # heads left in float
    assert "rconv1/w1.w" in inits and "rconv1/w1.w_quantized" not in inits  # first block left in float
    props = {p.key: p.value for p in q.metadata_props}
    assert props["katago.precision"] == "int8" and props["katago.calibration_positions"] == "24"
    m = verify(OnnxNet(q.SerializeToString()), ref, ver, net.postprocess, precision="int8").to_json()
    # measured: winrate p99 ~0.03-0.05, top-1 ~0.95; quantized for real, not broken
    assert 1e-4 < m["winrate_abs_error"]["p99"] < 0.1
    assert m["policy_top1_agreement"] >= 0.85


def test_quantize__int8_dynamic_needs_no_calibration(models_dir: Path, reference_dir: Path) -> None:
    net, fp32, ref, _, ver = _b6(models_dir, reference_dir)
    q = to_int8_dynamic(fp32)
    assert {p.key: p.value for p in q.metadata_props}["katago.int8_mode"] == "dynamic"
    conv = OnnxNet(q.SerializeToString())
    metrics = compare_outputs(evaluate_all(ref, ver), evaluate_all(conv, ver), ver, net.postprocess)
    assert 1e-4 < metrics["winrate_abs_error"]["p99"] < 0.1


def test_quantize__unknown_method_and_empty_calibration_are_errors(
    models_dir: Path, reference_dir: Path
) -> None:
    _, fp32, _, cal, _ = _b6(models_dir, reference_dir)
    with pytest.raises(ConversionError, match="unknown calibration method 'kl'"):
        to_int8_static(fp32, cal, method="kl")
    empty = PositionSet(cal.spatial[:0], cal.global_[:0], (), "none")
    with pytest.raises(ConversionError, match="at least one position"):
        to_int8_static(fp32, empty)
    with pytest.raises(ConversionError, match="unknown layer groups"):
        nodes_in_groups(fp32, ["no_such_group"])


def test_quantize__fp16_transformer_keeps_tip_sums_in_fp32(models_dir: Path, reference_dir: Path) -> None:
    """b7c96-cnorm: RMSNorm tip and softmax stay FP32; no FP16 round trip between kept nodes."""
    net, fp32, ref, _, ver = _setup(model_file(models_dir, "b7c96-cnorm"), reference_dir / "sgf")
    half = to_fp16(fp32)
    kept = set(fp16_float_nodes(fp32))
    assert any(n.op_type == "Softmax" for n in fp32.graph.node if n.name in kept)
    casts16 = [
        n for n in half.graph.node if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT16
    ]
    producers = {o: n.name for n in half.graph.node for o in n.output}
    assert not [c for c in casts16 if producers.get(c.input[0]) in kept and "trunkfinal" in c.input[0]]
    m = verify(OnnxNet(half.SerializeToString()), ref, ver, net.postprocess, precision="fp16").to_json()
    assert m["winrate_abs_error"]["p99"] < 0.005 and m["policy_top1_agreement"] >= 0.97
    assert np.isfinite(m["lead_abs_error"]["max"])


def test_quantize__int8_leaves_attention_scores_and_probabilities_float(
    models_dir: Path, reference_dir: Path
) -> None:
    """The QDQ quantizer ignores MatMulConstBOnly; activation x activation MatMuls must stay float."""
    net, fp32, ref, cal, ver = _setup(model_file(models_dir, "b7c96-gqa"), reference_dir / "sgf")
    small = PositionSet(cal.spatial[:8], cal.global_[:8], cal.ids[:8], cal.source)
    q = to_int8_static(fp32, small)
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    attention = [n for n in q.graph.node if n.name.endswith(("scores/MatMul", "attn/MatMul"))]
    assert len(attention) == 2 * 7  # 7 attention blocks in this net
    assert all(producers.get(i) != "DequantizeLinear" for n in attention for i in n.input)
    quantized = [
        n for n in q.graph.node if n.op_type == "MatMul" and producers.get(n.input[1]) == "DequantizeLinear"
    ]
    assert quantized  # the projections are quantized
    m = verify(OnnxNet(q.SerializeToString()), ref, ver, net.postprocess, precision="int8").to_json()
    assert m["policy_top1_agreement"] >= 0.85 and m["winrate_abs_error"]["p99"] < 0.1
