"""Bounded-memory INT8 calibration (agent.backends.onnx.quantize.streamed_histograms and
histogram_ranges, GPTQ statistics one position at a time) on g170-b6c96 and real positions.

The streamed histograms must be exactly what onnxruntime's collector computes from all
activations in one piece, whatever the batch size; the ranges exactly those of onnxruntime's
calibrator given every position at once.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edge_fixtures import model_file
from onnxruntime.quantization.calibrate import CalibrationMethod, HistogramCollector, create_calibrator

from agent.backends.onnx import weight_rounding as wr
from agent.backends.onnx.builder import build_onnx
from agent.backends.onnx.quantize import (
    _Reader,
    _streamed_collect_data,
    activation_matmuls,
    histogram_ranges,
    streamed_histograms,
)
from agent.models.positions import PositionSet, positions_from_sgf
from agent.network.reader import read_network

#: a trunk conv's input (after ReLU: non-negative) and output (both signs), a pooled MatMul's
#: input and the last conv's output
TENSORS = 4


@cache
def _b6(models: Path, sgf: Path) -> tuple[onnx.ModelProto, PositionSet]:
    fp32 = build_onnx(read_network(model_file(models, "b6c96")))
    return fp32, positions_from_sgf(sgf, 12, seed=7)


def _probe(fp32: onnx.ModelProto) -> tuple[ort.InferenceSession, list[str]]:
    """A session returning the inputs/outputs of a few Conv/MatMul nodes."""
    consts = {i.name for i in fp32.graph.initializer}
    convs = [n for n in fp32.graph.node if n.op_type == "Conv" and n.input[1] in consts]
    matmuls = [n for n in fp32.graph.node if n.op_type == "MatMul" and n.input[1] in consts]
    names = [convs[3].input[0], convs[3].output[0], matmuls[0].input[0], convs[-1].output[0]]
    assert len(set(names)) == TENSORS
    probe = onnx.ModelProto.FromString(fp32.SerializeToString())
    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in names if t not in existing)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess, names


def _run(sess: ort.InferenceSession, names: list[str]) -> Any:
    def run(feed: dict[str, np.ndarray]) -> Sequence[np.ndarray]:
        result: Sequence[np.ndarray] = sess.run(names, feed)
        return result

    return run


def _one_shot(
    sess: ort.InferenceSession, names: list[str], positions: PositionSet, *, symmetric: bool
) -> dict[str, tuple[Any, ...]]:
    """onnxruntime's collector given every activation of every position at once."""
    everything = sess.run(names, {"spatial": positions.spatial, "global": positions.global_})
    collector = HistogramCollector(
        method="percentile",
        symmetric=symmetric,
        num_bins=2048,
        num_quantized_bins=128,
        percentile=99.999,
        scenario="same",
    )
    with contextlib.redirect_stdout(io.StringIO()):
        collector.collect(dict(zip(names, everything, strict=True)))
    result: dict[str, tuple[Any, ...]] = collector.histogram_dict
    return result


def _assert_same(got: tuple[Any, ...], want: tuple[Any, ...]) -> None:
    assert len(got) == len(want)
    np.testing.assert_array_equal(got[0], want[0])  # counts
    np.testing.assert_array_equal(got[1], want[1])  # edges
    assert got[1].dtype == want[1].dtype
    for g, w in zip(got[2:], want[2:], strict=True):  # min, max (, threshold)
        assert float(g) == float(w)


@pytest.mark.parametrize("absolute", [False, True])
def test_streamed_histograms__equal_one_shot_histograms_whatever_the_batch(
    models_dir: Path, reference_dir: Path, absolute: bool
) -> None:
    fp32, positions = _b6(models_dir, reference_dir / "sgf")
    sess, names = _probe(fp32)
    want = _one_shot(sess, names, positions, symmetric=absolute)
    for batch in (1, 5):
        got = streamed_histograms(_run(sess, names), names, positions, 2048, absolute=absolute, batch=batch)
        assert list(got) == names
        for name in names:
            _assert_same(got[name], want[name])
    # all activations are counted (the fixed range holds every value)
    everything = sess.run(names, {"spatial": positions.spatial, "global": positions.global_})
    for name, arr in zip(names, everything, strict=True):
        assert int(got[name][0].sum()) == arr.size


def test_streamed_histograms__progress_counts_both_passes(models_dir: Path, reference_dir: Path) -> None:
    fp32, positions = _b6(models_dir, reference_dir / "sgf")
    sess, names = _probe(fp32)
    seen: list[tuple[int, int]] = []
    streamed_histograms(
        _run(sess, names), names, positions, 16, batch=5, progress=lambda d, t: seen.append((d, t))
    )
    assert seen == [(5, 12), (10, 12), (12, 12)] * 2


@pytest.mark.parametrize(
    ("method", "options"),
    [
        (CalibrationMethod.Percentile, {"symmetric": False, "percentile": 99.999}),
        (CalibrationMethod.Entropy, {"symmetric": False}),
    ],
)
def test_histogram_ranges__equal_onnxruntime_given_every_position_at_once(
    models_dir: Path, reference_dir: Path, tmp_path: Path, method: CalibrationMethod, options: dict[str, Any]
) -> None:
    fp32, positions = _b6(models_dir, reference_dir / "sgf")
    src = tmp_path / "fp32.onnx"
    onnx.save(fp32, src)
    with contextlib.redirect_stdout(io.StringIO()):
        ours = histogram_ranges(src, positions, method, options, tmp_path)
        theirs_calibrator: Any = create_calibrator(
            src,
            ["Conv", "MatMul"],
            augmented_model_path=str(tmp_path / "theirs.onnx"),
            calibrate_method=method,
            extra_options=options,
        )
        theirs_calibrator.collect_data(_Reader(positions, len(positions), None))  # one batch: one shot
        theirs = theirs_calibrator.compute_data()
    assert set(ours.keys()) == set(theirs.keys())
    assert len(ours.keys()) > 20
    for name in theirs:
        low, high = ours[name].range_value
        assert float(low) <= float(high)
        assert (float(low), float(high)) == tuple(float(v) for v in theirs[name].range_value), name


def test_streamed_collect_data__patch_gives_the_same_ranges_and_is_undone(
    models_dir: Path, reference_dir: Path, tmp_path: Path
) -> None:
    """The fallback for onnxruntime without ``calibration_cache_path``."""
    from onnxruntime.quantization.calibrate import HistogramCalibrater

    fp32, positions = _b6(models_dir, reference_dir / "sgf")
    src = tmp_path / "fp32.onnx"
    onnx.save(fp32, src)
    options = {"symmetric": False, "percentile": 99.99}
    original = HistogramCalibrater.collect_data
    with contextlib.redirect_stdout(io.StringIO()):
        ours = histogram_ranges(src, positions, CalibrationMethod.Percentile, options, tmp_path)
        with _streamed_collect_data():
            calibrator: Any = create_calibrator(
                src,
                ["Conv", "MatMul"],
                augmented_model_path=str(tmp_path / "patched.onnx"),
                calibrate_method=CalibrationMethod.Percentile,
                extra_options=options,
            )
            calibrator.collect_data(_Reader(positions, 8, None))
            patched = calibrator.compute_data()
    assert HistogramCalibrater.collect_data is original
    assert set(patched.keys()) == set(ours.keys())
    for name in ours:
        assert [float(v) for v in patched[name].range_value] == [float(v) for v in ours[name].range_value]


def test_collect_stats__one_position_per_run_equals_batches_of_eight(
    models_dir: Path, reference_dir: Path
) -> None:
    """The GPTQ statistics are sums over positions: the batch only changes float64 rounding."""
    fp32, positions = _b6(models_dir, reference_dir / "sgf")
    layers = [
        n
        for n in wr.quantized_layers(fp32, activation_matmuls(fp32))
        if n.name.startswith(("rconv2/", "rconv5/"))
    ]
    assert len(layers) >= 4
    one = wr.collect_stats(fp32, layers, positions, batch=1)
    eight = wr.collect_stats(fp32, layers, positions, batch=8)
    for n in layers:
        assert one[n.name].rows == eight[n.name].rows > 0
        np.testing.assert_allclose(one[n.name].hessian, eight[n.name].hessian, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(one[n.name].mean, eight[n.name].mean, rtol=1e-9, atol=1e-12)
