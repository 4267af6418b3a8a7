"""GPTQ weight rounding for static INT8 (agent.backends.onnx.weight_rounding) on g170-b6c96.

Values asserted are measured on the real network and real calibration positions from the
reference SGF games (docs/conversion.md, "INT8"), with some slack.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from edge_fixtures import model_file

from agent.backends.onnx import weight_rounding as wr
from agent.backends.onnx.builder import build_onnx
from agent.backends.onnx.quantize import (
    INT8_FLOAT_GROUPS,
    activation_matmuls,
    int8_mode_options,
    nodes_in_groups,
    residual_increments,
    share_relu_output_ranges,
    to_int8_static,
)
from agent.backends.onnx.runtime import OnnxNet
from agent.errors import ConversionError
from agent.models.positions import PositionSet, positions_from_sgf
from agent.models.verify import verify
from agent.network.model import Network
from agent.network.reader import read_network


@cache
def _b6(models: Path, sgf: Path) -> tuple[Network, onnx.ModelProto, PositionSet, PositionSet]:
    net = read_network(model_file(models, "b6c96"))
    fp32 = build_onnx(net)
    cal = positions_from_sgf(sgf, 128, seed=7)
    ver = positions_from_sgf(sgf, 100, seed=1001, exclude=cal.ids)
    return net, fp32, cal, ver


def _layers(fp32: onnx.ModelProto) -> list[onnx.NodeProto]:
    exclude = nodes_in_groups(fp32, INT8_FLOAT_GROUPS) + activation_matmuls(fp32)
    return wr.quantized_layers(fp32, exclude)


def test_gptq__reduces_layer_output_error_on_held_out_positions(
    models_dir: Path, reference_dir: Path
) -> None:
    """Rounding chosen on calibration positions, error measured on other positions."""
    _, fp32, cal, ver = _b6(models_dir, reference_dir / "sgf")
    layers = [n for n in _layers(fp32) if n.name.startswith(("rconv2/", "rconv5/"))]
    assert len(layers) == 6  # rconv2 w1, w2; rconv5 w1a, w1b, w1r (pooled MatMul), w2
    train = wr.collect_stats(fp32, layers, cal)
    held = wr.collect_stats(fp32, layers, PositionSet(ver.spatial[:32], ver.global_[:32], ver.ids[:32], ""))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in fp32.graph.initializer}
    nearest = wr.rounded_weights(fp32, layers, train, "nearest")
    gptq = wr.rounded_weights(fp32, layers, train, "gptq")
    ratios = []
    for n in layers:
        m = wr.weight_matrix(n, inits[n.input[1]])
        scale = wr.channel_scales(m)
        q_near, q_gptq = wr.weight_matrix(n, nearest[n.input[1]]), wr.weight_matrix(n, gptq[n.input[1]])
        assert np.array_equal(q_gptq, np.round(q_gptq)) and np.abs(q_gptq).max() <= 127
        assert np.array_equal(q_near, np.clip(np.round(m / scale[:, None]), -127, 127))
        ratios.append(
            wr.output_error(m, q_gptq, scale, held[n.name]) / wr.output_error(m, q_near, scale, held[n.name])
        )
    # measured 0.2-0.5 per layer: GPTQ removes half or more of the pre-activation error
    assert max(ratios) < 0.8 and float(np.mean(ratios)) < 0.6


def test_gptq__keeps_the_per_channel_grid_of_the_quantizer(models_dir: Path, reference_dir: Path) -> None:
    _, fp32, cal, _ = _b6(models_dir, reference_dir / "sgf")
    small = PositionSet(cal.spatial[:16], cal.global_[:16], cal.ids[:16], cal.source)
    q = to_int8_static(fp32, small, method="minmax", weight_rounding="gptq")
    props = {p.key: p.value for p in q.metadata_props}
    assert props["katago.weight_rounding"] == "gptq"
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    floats = {i.name: onnx.numpy_helper.to_array(i) for i in fp32.graph.initializer}
    w = floats["rconv3/w2.w"]
    scale = inits["rconv3/w2.w_scale"]
    assert np.allclose(scale, np.abs(w).reshape(96, -1).max(axis=1) / 127, rtol=1e-6)  # same grid
    qw = inits["rconv3/w2.w_quantized"].astype(np.int64)
    nearest = np.clip(np.round(w / scale[:, None, None, None]), -127, 127)
    changed = float(np.mean(qw != nearest))
    assert 0.05 < changed < 0.6  # GPTQ rounds a sizeable share of weights the other way ...
    steps = np.abs(qw - nearest)
    assert steps.max() <= 4 and float(np.mean(steps[steps > 0] == 1)) > 0.95  # ... mostly by one step


def test_gptq__unknown_rounding_is_an_error(models_dir: Path, reference_dir: Path) -> None:
    _, fp32, cal, _ = _b6(models_dir, reference_dir / "sgf")
    with pytest.raises(ConversionError, match="unknown weight rounding 'floor'"):
        to_int8_static(fp32, cal, weight_rounding="floor")


def test_share_relu_output_ranges__zero_point_zero_before_relu(models_dir: Path, reference_dir: Path) -> None:
    _, fp32, cal, _ = _b6(models_dir, reference_dir / "sgf")
    small = PositionSet(cal.spatial[:8], cal.global_[:8], cal.ids[:8], cal.source)
    q = to_int8_static(
        fp32, small, quantize_outputs=True, keep_float=("initial", "policy_head", "value_head")
    )
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    for block in ("rconv2", "rconv4", "rconv6"):  # conv -> ReLU -> mask -> next conv
        assert int(inits[f"{block}/w1/Conv_zero_point"]) == 0
        assert inits[f"{block}/w1/Conv_scale"] == inits[f"{block}/norm2/mask/Mul_scale"]
    assert int(inits["rconv3/w1b/Conv_zero_point"]) == 0  # ReLU into global pooling
    assert int(inits["rconv2/w2/Conv_zero_point"]) != 0  # residual increments keep their sign
    assert share_relu_output_ranges(q) == 6  # idempotent: applying again changes the same ones


def test_int8_default__passes_the_thresholds_on_b6c96(models_dir: Path, reference_dir: Path) -> None:
    """static + GPTQ (the convert default) against the FP32 reference, 128 calibration positions."""
    net, fp32, cal, ver = _b6(models_dir, reference_dir / "sgf")
    q = to_int8_static(fp32, cal, method="percentile", weight_rounding="gptq")
    ref = OnnxNet(fp32.SerializeToString(), intra_op_threads=1)
    report = verify(
        OnnxNet(q.SerializeToString(), intra_op_threads=1), ref, ver, net.postprocess, precision="int8"
    )
    m = report.to_json()
    assert report.passed, report.summary()
    assert 1e-3 < m["winrate_abs_error"]["p99"] < 0.03 and m["lead_abs_error"]["p99"] < 1.0


def test_static_mixed__leaves_the_residual_increments_float(models_dir: Path, reference_dir: Path) -> None:
    net, fp32, cal, ver = _b6(models_dir, reference_dir / "sgf")
    assert residual_increments(fp32) == [f"rconv{i}/w2/Conv" for i in range(1, 7)]
    small = PositionSet(cal.spatial[:8], cal.global_[:8], cal.ids[:8], cal.source)
    options = int8_mode_options("static-mixed")
    q = to_int8_static(fp32, small, keep_float=("initial", "policy_head", "value_head"), **options)
    inits = {i.name for i in q.graph.initializer}
    assert "rconv2/w2.w" in inits and "rconv2/w2.w_quantized" not in inits  # increment: float
    assert "rconv2/w1.w_quantized" in inits and "rconv2/w1/Conv_scale" in inits  # ReLU-fed: int8 output
    assert {p.key: p.value for p in q.metadata_props}["katago.int8_mode"] == "static-mixed"
    with pytest.raises(ConversionError, match="unknown static INT8 mode"):
        int8_mode_options("static-fast")
    ref = OnnxNet(fp32.SerializeToString(), intra_op_threads=1)
    m = verify(
        OnnxNet(q.SerializeToString(), intra_op_threads=1), ref, ver, net.postprocess, precision="int8"
    )
    assert 1e-3 < m.metrics["winrate_abs_error"]["p99"] < 0.08  # 8 calibration positions: coarse
