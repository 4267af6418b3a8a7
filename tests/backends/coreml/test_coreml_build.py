"""The four shared networks convert to ``.mlpackage`` at FP32/FP16/INT8 and pass the structural
check against the ONNX graph built from the same network (spec read back from the saved package)."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
from conftest import Built

from agent.backends.coreml.builder import MAX_BATCH, package_size
from agent.backends.coreml.structure import check_structure, load_program, package_metadata
from agent.backends.onnx.builder import OUTPUT_NAMES

NETS = ["b6c96", "b7c96-cnorm", "b7c96-gqa", "b10c384"]
PRECISIONS = ["fp32", "fp16", "int8"]


def _live_onnx_nodes(onnx_model: object) -> int:
    from agent.backends.coreml.structure import _live_nodes, _silu_pairs

    live = _live_nodes(onnx_model)
    return len(live - set(_silu_pairs(onnx_model).values()))


#: every network at every precision (b10c384 at FP32 and INT8 adds about 95 s on a 2-core machine)
CASES = [(k, p) for k in NETS for p in PRECISIONS]


@pytest.mark.needs_models
@pytest.mark.slow
@pytest.mark.parametrize(("key", "precision"), CASES)
def test_coreml__network_converts_and_passes_structural_check(
    coreml_package: Callable[[str, str], Built], key: str, precision: str
) -> None:
    b = coreml_package(key, precision)
    report = check_structure(load_program(b.path), b.onnx, precision)
    assert report.mismatches == []
    assert report.ops_checked == _live_onnx_nodes(b.onnx)
    # every float initializer read by a live node is compared
    assert report.weights_checked > 0
    if precision == "fp32":
        assert report.fp16_ops == 0 and report.int8_weights == 0
    if precision == "fp16":
        assert report.fp16_ops > 0 and report.int8_weights == 0
    if precision == "int8":
        assert report.int8_weights == len(b.build.quantized) > 0
    assert report.op_counts["identity"] == len(OUTPUT_NAMES)


@pytest.mark.needs_models
@pytest.mark.slow
@pytest.mark.parametrize("key", ["b6c96", "b7c96-gqa"])
def test_coreml__package_interface_and_metadata(
    coreml_package: Callable[[str, str], Built], key: str
) -> None:
    import coremltools as ct

    b = coreml_package(key, "fp16")
    spec = ct.models.MLModel(str(b.path), skip_model_load=True).get_spec()
    inputs = {i.name: i.type.multiArrayType for i in spec.description.input}
    assert list(inputs) == ["spatial", "global"]
    spatial = inputs["spatial"].shapeRange.sizeRanges
    assert [(r.lowerBound, r.upperBound) for r in spatial] == [(1, MAX_BATCH), (22, 22), (19, 19), (19, 19)]
    assert [(r.lowerBound, r.upperBound) for r in inputs["global"].shapeRange.sizeRanges] == [
        (1, MAX_BATCH),
        (19, 19),
    ]
    assert [o.name for o in spec.description.output] == list(OUTPUT_NAMES)
    meta = package_metadata(b.path)
    assert meta["katago.name"] == b.network.name
    assert meta["katago.model_version"] == str(b.network.version)
    assert meta["katago.precision"] == "fp16"
    assert meta["katago.input_layout"] == "NCHW"
    assert json.loads(meta["katago.postprocess"]) == b.network.postprocess.to_dict()
    assert "initial" in json.loads(meta["katago.layer_groups"])


@pytest.mark.needs_models
@pytest.mark.slow
def test_coreml__sizes_shrink_with_precision(coreml_package: Callable[[str, str], Built]) -> None:
    sizes = {p: package_size(coreml_package("b6c96", p).path) for p in PRECISIONS}
    # b6c96: ~1.1 M parameters; FP16 halves the weights, INT8 quarters those it quantizes
    assert 0.45 < sizes["fp16"] / sizes["fp32"] < 0.6, sizes
    assert sizes["int8"] < 0.8 * sizes["fp16"], sizes


@pytest.mark.needs_models
@pytest.mark.slow
def test_coreml__int8_weights_are_per_channel_symmetric(coreml_package: Callable[[str, str], Built]) -> None:
    b = coreml_package("b6c96", "int8")
    ops = [
        op for op in load_program(b.path).functions["main"].operations if op.op_type.startswith("constexpr")
    ]
    assert len(ops) == len(b.build.quantized)
    for op in ops:
        q = op.inputs["quantized_data"].val
        scale = op.inputs["scale"].val
        axis = int(op.inputs["axis"].val)
        assert q.dtype == np.int8
        assert np.all(op.inputs["zero_point"].val == 0)
        assert scale.shape == (q.shape[axis],)
        # symmetric: each channel's largest weight maps to +-127
        peak = np.abs(q).max(axis=tuple(i for i in range(q.ndim) if i != axis))
        assert np.all(peak >= 126), op.name
