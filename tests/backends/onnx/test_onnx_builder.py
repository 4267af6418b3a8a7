"""The ONNX graph agrees with the numpy reference and with KataGo's recorded ``kata-raw-nn``."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
from edge_fixtures import model_file
from onnx_support import assert_within_tolerance, load_reference, worst_errors

from agent.backends.base import NNInputs, NNOutputs
from agent.backends.numpy.runtime import forward
from agent.backends.onnx.builder import OUTPUT_NAMES, OnnxBuildOptions, build_onnx
from agent.backends.onnx.runtime import OnnxNet
from agent.network.model import Network
from agent.network.reader import read_network


@cache
def _net(path: Path) -> Network:
    return read_network(path)


@cache
def _onnx(path: Path, bx: int = 19, by: int = 19) -> OnnxNet:
    model = build_onnx(_net(path), OnnxBuildOptions(board_x=bx, board_y=by))
    return OnnxNet(model.SerializeToString(), intra_op_threads=2)


def _relative(ours: NNOutputs, ref: NNOutputs) -> dict[str, float]:
    """max |ours - ref| / max |ref| per output."""
    out = {}
    for name in OUTPUT_NAMES:
        a, b = getattr(ours, name), getattr(ref, name)
        assert a.shape == b.shape, name
        out[name] = float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))
    return out


@pytest.mark.parametrize(
    ("key", "rows"), [("b6c96", 99), ("b7c96-cnorm", 8), ("b7c96-gqa", 8), ("b10c384", 2)]
)
def test_onnx_builder__agrees_with_numpy_reference(
    models_dir: Path, reference_dir: Path, key: str, rows: int
) -> None:
    path = model_file(models_dir, key)
    _, spatial, global_ = load_reference(reference_dir, key)
    idx = np.linspace(0, 98, rows).astype(int)
    ours = _onnx(path).evaluate(NNInputs(spatial[idx], global_[idx]))
    ref = forward(_net(path), spatial[idx], global_[idx])
    rel = _relative(ours, ref)
    assert max(rel.values()) < 1e-5, rel


@pytest.mark.parametrize("key", ["b6c96", "b7c96-cnorm", "b7c96-gqa"])
def test_onnx_builder__matches_katago_rawnn(models_dir: Path, reference_dir: Path, key: str) -> None:
    net = _onnx(model_file(models_dir, key))
    records, spatial, global_ = load_reference(reference_dir, key)
    raw = net.evaluate(NNInputs(spatial, global_))
    assert_within_tolerance(worst_errors(raw, net.postprocess_params, records, spatial, global_))


@pytest.mark.slow
def test_onnx_builder__b10c384_matches_katago_rawnn_all_positions(
    models_dir: Path, reference_dir: Path
) -> None:
    net = _onnx(model_file(models_dir, "b10c384"))
    records, spatial, global_ = load_reference(reference_dir, "b10c384")
    rows = [net.evaluate(NNInputs(spatial[i : i + 11], global_[i : i + 11])) for i in range(0, 99, 11)]
    raw = NNOutputs(*(np.concatenate([getattr(r, f) for r in rows]) for f in OUTPUT_NAMES))
    assert_within_tolerance(worst_errors(raw, net.postprocess_params, records, spatial, global_))


@pytest.mark.parametrize("key", ["b6c96", "b7c96-gqa"])
def test_onnx_builder__small_buffer_matches_katago(models_dir: Path, reference_dir: Path, key: str) -> None:
    """A graph built for a 9x9 buffer evaluates the 9x9 games exactly like the 19x19 one (spec §3.1)."""
    records, spatial, global_ = load_reference(reference_dir, key)
    idx = [i for i, r in enumerate(records) if r["board_x_size"] == 9 and r["board_y_size"] == 9]
    assert len(idx) == 10
    net = _onnx(model_file(models_dir, key), 9, 9)
    sp = np.ascontiguousarray(spatial[idx, :, :9, :9])
    raw = net.evaluate(NNInputs(sp, global_[idx]))
    assert raw.policy.shape[-1] == 81
    assert_within_tolerance(
        worst_errors(raw, net.postprocess_params, [records[i] for i in idx], sp, global_[idx])
    )


def test_onnx_builder__graph_metadata_and_dynamic_batch(models_dir: Path) -> None:
    net = _net(model_file(models_dir, "b7c96-gqa"))
    model = build_onnx(net)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["katago.name"] == net.name and meta["katago.model_version"] == "17"
    assert [i.name for i in model.graph.input] == ["spatial", "global"]
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [22, 19, 19]
    assert not any(n.op_type == "Transpose" and "blocks.1." in n.name for n in model.graph.node), (
        "consecutive transformer blocks should run without layout transposes"
    )
