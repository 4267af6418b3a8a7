"""Static INT8 of transformer nets: the sensitivity pass's units (one per block and kind of layer)
and its start from the fixed float list, checked against KataGo's recorded outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from edge_fixtures import model_file
from onnx_support import load_reference, worst_errors

from agent.backends.base import NNInputs
from agent.backends.onnx.builder import OnnxBuildOptions, build_onnx
from agent.backends.onnx.quantize import INT8_FLOAT_GROUPS, nodes_in_groups, to_int8_static
from agent.backends.onnx.runtime import OnnxNet
from agent.backends.onnx.sensitivity import (
    is_transformer,
    quantizable_nodes,
    quantization_units,
    start_units,
    with_float_nodes,
)
from agent.models.positions import positions_from_sgf
from agent.models.sensitivity import run_pass
from agent.network.reader import read_network

B7_START = [
    "initial",
    "policy_head",
    "value_head",
    "block0.attention_qkv",
    "block0.attention_out",
    *(f"block{i}.ffn_out" for i in range(1, 14, 2)),
]


def test_quantization_units__a_transformer_block_splits_by_kind(models_dir: Path) -> None:
    b7 = build_onnx(read_network(model_file(models_dir, "b7c96-cnorm")))
    units = quantization_units(b7)
    assert is_transformer(b7) and len(units) == 31
    assert list(units)[:7] == [
        "initial",
        "policy_head",
        "value_head",
        "block0.attention_qkv",
        "block0.attention_out",
        "block1.ffn_in",
        "block1.ffn_out",
    ]
    assert units["block2.attention_qkv"] == [f"model.blocks.2.{p}_proj/MatMul" for p in "qkv"]
    flat = [n for nodes in units.values() for n in nodes]
    assert sorted(flat) == sorted(quantizable_nodes(b7)) and len(flat) == len(set(flat)) == 62
    # the start list is exactly the units inside INT8_FLOAT_GROUPS
    assert start_units(b7) == B7_START
    inside = set(nodes_in_groups(b7, INT8_FLOAT_GROUPS)) & set(flat)
    assert {n for u in B7_START for n in units[u]} == inside
    b6 = build_onnx(read_network(model_file(models_dir, "b6c96")))
    assert not is_transformer(b6) and start_units(b6) == []


def test_sensitivity_pass__transformer_starts_from_the_fixed_list_close_to_katago(
    models_dir: Path, reference_dir: Path
) -> None:
    """b7c96h3tfrs on a 9x9 buffer (9x9 games): every layer INT8 is far from KataGo's recorded
    outputs; the pass starts from the fixed list, adds what the held-out positions ask for, and
    lands close to KataGo."""
    net = read_network(model_file(models_dir, "b7c96-cnorm"))
    fp32 = build_onnx(net, OnnxBuildOptions(board_x=9, board_y=9))
    sgf = reference_dir / "sgf"
    cal = positions_from_sgf(sgf, 32, nn_x=9, nn_y=9, seed=7)
    held = positions_from_sgf(sgf, 40, nn_x=9, nn_y=9, seed=4242, exclude=cal.ids)
    quant = to_int8_static(fp32, cal, method="percentile", keep_float=(), weight_rounding="nearest")
    chosen = run_pass(quant, fp32, held, net.postprocess, threads=1, start=start_units(fp32))
    report, graph = chosen.report, chosen.graph()
    assert report.start == B7_START and report.steps[0]["action"] == "start list float"
    assert report.passed and report.float_units[: len(B7_START)] == B7_START
    added = report.float_units[len(B7_START) :]
    assert set(added) <= set(report.alone) and not set(B7_START) & set(report.alone)
    final = [s for s in report.steps if sorted(s["float"]) == sorted(report.float_units)]
    assert final and final[-1]["passes"]
    records, spatial, global_ = load_reference(reference_dir, "b7c96-cnorm")
    idx = [i for i, r in enumerate(records) if r["board_x_size"] == 9 and r["board_y_size"] == 9]
    records, spatial, global_ = (
        [records[i] for i in idx],
        np.ascontiguousarray(spatial[idx, :, :9, :9]),
        global_[idx],
    )
    worst = {}
    units = quantization_units(fp32)
    for key, model in (("all", with_float_nodes(quant, fp32, [])), ("pass", graph)):
        onnx_net = OnnxNet(model.SerializeToString(), intra_op_threads=1)
        raw = onnx_net.evaluate(NNInputs(spatial, global_))
        worst[key] = worst_errors(raw, onnx_net.postprocess_params, records, spatial, global_)
    assert sum(len(units[u]) for u in report.float_units) < len(quantizable_nodes(fp32))
    assert worst["pass"]["win"] < worst["all"]["win"] and worst["pass"]["lead"] < worst["all"]["lead"], worst
    assert worst["pass"]["win"] < 0.05 and worst["pass"]["lead"] < 2.0, worst
