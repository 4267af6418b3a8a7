"""ONNX FP16 and INT8 versions of a built FP32 KataGo graph.

**FP16** (:func:`to_fp16`): weights and activations in half precision, with FP32 kept where
KataGo itself keeps it for safety: the trunk tip (its norm and activation), both heads (policy,
value, score, ownership), every RMSNorm (squares and means overflow half precision), the attention
softmax with its additive key mask, and the mask/pooling bookkeeping. Inputs and outputs stay
FP32, so every runtime and the shared post-processing see the same interface. On x86 CPUs
onnxruntime has few FP16 kernels and runs most FP16 nodes through inserted casts; FP16 is meant
for GPUs (CUDA/TensorRT EPs) and ARM CPUs with FP16 arithmetic.

**INT8 static** (:func:`to_int8_static`): post-training quantization in QDQ format with
per-channel symmetric INT8 weights and UINT8 activations (the fast ``u8s8`` path of
onnxruntime's x86 and ARM kernels), calibrated on real positions (see
:mod:`agent.models.positions`) with min-max, percentile or entropy ranges. Only ``Conv`` and
``MatMul`` with constant weights are quantized (the attention score/value MatMuls multiply two
activations and stay FP32). Layers measured to quantize badly are left in float by default;
:data:`INT8_FLOAT_GROUPS` documents them. ``weight_rounding="gptq"`` (the ``convert`` default)
rounds the INT8 weights with :mod:`agent.backends.onnx.weight_rounding` on the calibration positions.
Modes (:func:`int8_mode_options`): ``static`` (float Conv/MatMul outputs), ``static-qlinear``
(quantized outputs, ``QLinearConv``) and ``static-mixed`` (quantized outputs except the
residual-stream increments).

**INT8 dynamic** (:func:`to_int8_dynamic`): weight-only INT8 with activation ranges computed on
the fly per batch; no calibration, simpler, usually a little slower than static.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from inspect import signature
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import onnx

from agent.backends.onnx import weight_rounding as weight_rounding_mod
from agent.errors import ConversionError
from agent.network.tensors import PositionSet

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
#: Methods whose ranges come from activation histograms (:func:`streamed_histograms`).
HISTOGRAM_METHODS = ("percentile", "entropy")

#: Layer groups (``katago.layer_groups`` metadata written by the builder) kept FP32 in FP16
#: graphs, plus node-name prefixes/substrings for the mask bookkeeping, pooling and softmax.
FP16_FLOAT_GROUPS = ("tip", "policy_head", "value_head", "rmsnorm")
FP16_FLOAT_PREFIXES = ("mask/", "output/", "policy/", "ownership/")
FP16_FLOAT_SUBSTRINGS = (".scores_mask", ".softmax", ".gpool", ".vpool")

#: Layer groups left in float in the static INT8 graph, chosen by measurement
#: (docs/conversion.md): the heads and the initial conv (a few percent of the FLOPs, most of the
#: value/lead error), the first trunk block (where the global inputs enter the residual stream;
#: b10c384 win-rate p99 0.095 -> 0.038 together with ffn_out) and the SwiGLU output projections
#: (inputs with 5-12x outliers over their 99.9th percentile; policy KL 0.019 -> 0.005).
INT8_FLOAT_GROUPS: tuple[str, ...] = ("initial", "policy_head", "value_head", "block0", "ffn_out")


def layer_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    props = {p.key: p.value for p in model.metadata_props}
    groups: dict[str, list[str]] = json.loads(props.get("katago.layer_groups", "{}"))
    return groups


def nodes_in_groups(model: onnx.ModelProto, groups: Sequence[str]) -> list[str]:
    """Names of the nodes whose layer belongs to one of ``groups``."""
    known = layer_groups(model)
    unknown = [g for g in groups if g not in known]
    if unknown:
        raise ConversionError(f"unknown layer groups {unknown}; this graph has {sorted(known)}")
    prefixes = tuple(f"{layer}{sep}" for g in groups for layer in known[g] for sep in ("/", "."))
    return [n.name for n in model.graph.node if n.name.startswith(prefixes)]


def _set_precision(model: onnx.ModelProto, precision: str, extra: dict[str, str] | None = None) -> None:
    props = {p.key: p.value for p in model.metadata_props}
    props["katago.precision"] = precision
    props.update(extra or {})
    onnx.helper.set_model_props(model, props)


def fp16_float_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes the FP16 conversion keeps in FP32 (see module docstring)."""
    keep = set(nodes_in_groups(model, FP16_FLOAT_GROUPS))
    for n in model.graph.node:
        if (
            n.name.startswith(FP16_FLOAT_PREFIXES)
            or any(s in n.name for s in FP16_FLOAT_SUBSTRINGS)
            or n.op_type == "Softmax"
        ):
            keep.add(n.name)
    return [n.name for n in model.graph.node if n.name in keep]


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 copy of an FP32 katago-edge graph (FP32 I/O, see the module docstring).

    A direct rewrite rather than onnxruntime's ``float16`` converter, which round-trips the
    tensors *between* two blocked nodes through FP16 (overflowing the trunk tip's sums of
    squares). Every node runs in FP16 unless kept; a ``Cast`` sits on each edge whose producer
    and consumer differ; float initializers are stored in the precision of their consumers
    (duplicated when both use them).
    """
    keep = set(fp16_float_nodes(model))
    half = onnx.ModelProto.FromString(model.SerializeToString())
    graph = half.graph
    inits = {i.name: i for i in graph.initializer}
    precision: dict[str, int] = {i.name: onnx.TensorProto.FLOAT for i in graph.input}
    for node in graph.node:
        for out in node.output:
            precision[out] = onnx.TensorProto.FLOAT if node.name in keep else onnx.TensorProto.FLOAT16
    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}
    fp16_inits: dict[str, str] = {}

    def cast(tensor: str, to: int) -> str:
        key = (tensor, to)
        if key not in casts:
            name = f"{tensor}/cast{'16' if to == onnx.TensorProto.FLOAT16 else '32'}"
            new_nodes.append(onnx.helper.make_node("Cast", [tensor], [name], name=name, to=to))
            casts[key] = name
        return casts[key]

    for node in graph.node:
        want = onnx.TensorProto.FLOAT if node.name in keep else onnx.TensorProto.FLOAT16
        for i, name in enumerate(node.input):
            init = inits.get(name)
            if init is not None:
                if init.data_type == onnx.TensorProto.FLOAT and want == onnx.TensorProto.FLOAT16:
                    if name not in fp16_inits:
                        arr = onnx.numpy_helper.to_array(init)
                        clipped = np.clip(arr, -65504.0, 65504.0).astype(np.float16)
                        fp16_inits[name] = f"{name}/fp16"
                        graph.initializer.append(onnx.numpy_helper.from_array(clipped, fp16_inits[name]))
                    node.input[i] = fp16_inits[name]
            elif name in precision and precision[name] != want:
                node.input[i] = cast(name, want)
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    for out in graph.output:
        producer = next(n for n in graph.node if out.name in n.output)
        if precision.get(out.name) == onnx.TensorProto.FLOAT16:
            renamed = f"{out.name}/half"
            producer.output[list(producer.output).index(out.name)] = renamed
            graph.node.append(
                onnx.helper.make_node(
                    "Cast", [renamed], [out.name], name=f"{out.name}/cast32", to=onnx.TensorProto.FLOAT
                )
            )
    used = {i for n in graph.node for i in n.input}
    remaining = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(remaining)
    del graph.value_info[:]
    try:
        onnx.checker.check_model(half)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"FP16 conversion produced an invalid graph: {exc}") from exc
    _set_precision(half, "fp16", {"katago.fp16_float_nodes": str(len(keep))})
    logger.info("FP16: %d of %d nodes kept in FP32", len(keep), len(model.graph.node))
    return half


class _Reader:
    """onnxruntime ``CalibrationDataReader`` over a :class:`PositionSet` in fixed-size batches."""

    def __init__(
        self, positions: PositionSet, batch: int, progress: Callable[[int, int], None] | None
    ) -> None:
        self.positions = positions
        self.batch = batch
        self.progress = progress
        self._it: Iterator[dict[str, np.ndarray]] = self._gen()

    def _gen(self) -> Iterator[dict[str, np.ndarray]]:
        total = len(self.positions)
        for i, b in enumerate(self.positions.batches(self.batch)):
            if self.progress:
                self.progress(min((i + 1) * self.batch, total), total)
            yield {"spatial": b.spatial, "global": b.global_}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._gen()


#: Positions per inference run in the histogram passes and the GPTQ statistics: every activation
#: of a run is held at once (b10c384: ~250 MB per position for the 402 calibrated tensors).
STREAM_BATCH = 1

#: ``HistogramCollector.histogram_dict`` entry: ``(counts, edges, min, max, threshold)``, or
#: ``(counts, edges, min, max)`` for histograms of absolute values.
Histogram = tuple[Any, ...]


def streamed_histograms(
    run: Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]],
    names: Sequence[str],
    positions: PositionSet,
    num_bins: int,
    *,
    absolute: bool = False,
    batch: int = STREAM_BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Histogram]:
    """Histograms of the tensors ``names`` over all ``positions``, in onnxruntime's
    ``HistogramCollector`` format, holding the activations of one batch at a time.

    ``run(feed)`` returns the tensors ``names`` for one batch. Pass 1 records each tensor's
    minimum and maximum (and those of ``|x|``); pass 2 adds up ``np.histogram`` counts over that
    fixed range. The result is what the collector computes from all activations in one piece
    (``np.histogram(x, num_bins, range=(-t, t))`` with ``t = max|x|``, or with ``absolute`` the
    histogram of ``|x|`` over ``[min|x|, max|x|]``), so it does not depend on ``batch``;
    onnxruntime's own collector re-bins whenever a later batch exceeds the range so far.
    """
    total = len(positions)
    lows: dict[str, Any] = {}
    highs: dict[str, Any] = {}
    abs_lows: dict[str, Any] = {}
    abs_highs: dict[str, Any] = {}

    def batches(step: int) -> Iterator[list[np.ndarray]]:
        for i, b in enumerate(positions.batches(batch)):
            yield [np.asarray(a) for a in run({"spatial": b.spatial, "global": b.global_})]
            if progress:
                progress(min((i + 1) * batch, total), total)
            logger.debug("histogram pass %d: %d of %d positions", step, min((i + 1) * batch, total), total)

    for outputs in batches(1):
        for name, arr in zip(names, outputs, strict=True):
            if arr.size == 0:
                continue
            low, high = np.nanmin(arr), np.nanmax(arr)
            lows[name] = low if name not in lows else min(lows[name], low)
            highs[name] = high if name not in highs else max(highs[name], high)
            if absolute:
                mags = np.absolute(arr)
                abs_low, abs_high = np.nanmin(mags), np.nanmax(mags)
                abs_lows[name] = abs_low if name not in abs_lows else min(abs_lows[name], abs_low)
                abs_highs[name] = abs_high if name not in abs_highs else max(abs_highs[name], abs_high)
    counts: dict[str, Any] = {}
    edges: dict[str, Any] = {}
    dtypes: dict[str, Any] = {}
    for outputs in batches(2):
        for name, arr in zip(names, outputs, strict=True):
            dtypes.setdefault(name, arr.dtype)
            flat = arr.reshape(-1)
            if absolute:
                mags = np.absolute(flat)
                bounds = (
                    abs_lows.get(name, np.array(0, arr.dtype)),
                    abs_highs.get(name, np.array(0, arr.dtype)),
                )
                hist, hist_edges = np.histogram(mags, bins=num_bins, range=bounds)
                hist_edges = hist_edges.astype(arr.dtype)
            else:
                threshold = _threshold(lows.get(name), highs.get(name), arr.dtype)
                hist, hist_edges = np.histogram(flat, num_bins, range=(-threshold, threshold))
            counts[name] = hist if name not in counts else counts[name] + hist
            edges.setdefault(name, hist_edges)
    result: dict[str, Histogram] = {}
    for name in names:
        zero = np.array(0, dtypes[name])
        low, high = lows.get(name, zero), highs.get(name, zero)
        if absolute:
            result[name] = (counts[name], edges[name], low, high)
        else:
            result[name] = (counts[name], edges[name], low, high, _threshold(low, high, dtypes[name]))
    return result


def _threshold(low: Any, high: Any, dtype: Any) -> Any:
    """``max(|min|, |max|)`` as onnxruntime's collector computes it (0 for a tensor never seen)."""
    if low is None or high is None:
        return np.array(0, dtype=dtype)
    return np.array(max(abs(low), abs(high)), dtype=dtype)


def collect_streamed(
    calibrator: Any, positions: PositionSet, progress: Callable[[int, int], None] | None
) -> None:
    """Give an onnxruntime ``HistogramCalibrater`` (augmented graph and session ready) the finished
    histograms of its tensors over ``positions`` (:func:`streamed_histograms`), in place of its
    ``collect_data``, which holds every activation of everything it is given before binning."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    names = sorted(calibrator.tensors_to_calibrate)
    session = calibrator.infer_session

    def run(feed: dict[str, np.ndarray]) -> Sequence[np.ndarray]:
        result: Sequence[np.ndarray] = session.run(names, feed)
        return result

    absolute = calibrator.method == "percentile" and bool(calibrator.symmetric)
    histograms = streamed_histograms(
        run, names, positions, calibrator.num_bins, absolute=absolute, progress=progress
    )
    collector = HistogramCollector(
        method=calibrator.method,
        symmetric=calibrator.symmetric,
        num_bins=calibrator.num_bins,
        num_quantized_bins=calibrator.num_quantized_bins,
        percentile=calibrator.percentile,
        scenario=calibrator.scenario,
    )
    collector.histogram_dict.update(histograms)
    calibrator.collector = collector
    logger.info("INT8 calibration: %d tensors histogrammed in two passes", len(names))


def histogram_ranges(
    model_path: Path,
    positions: PositionSet,
    method: Any,
    options: dict[str, Any],
    work_dir: Path,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """onnxruntime's percentile/entropy ranges (its ``TensorsData``) for the Conv/MatMul tensors of
    the graph at ``model_path``: its calibrator chooses the tensors, runs its augmented graph and
    turns the histograms into ranges (``compute_data``) as ``quantize_static`` does; the histograms
    are :func:`collect_streamed`'s. ``options``: the calibrator's ``extra_options``."""
    from onnxruntime.quantization.calibrate import create_calibrator

    calibrator: Any = create_calibrator(
        model_path,
        ["Conv", "MatMul"],
        augmented_model_path=str(work_dir / "augmented.onnx"),
        calibrate_method=method,
        extra_options=options,
    )
    collect_streamed(calibrator, positions, progress)
    return calibrator.compute_data()


@contextlib.contextmanager
def _streamed_collect_data() -> Iterator[None]:
    """For onnxruntime without ``quantize_static(calibration_cache_path=...)``: its histogram
    calibrators' ``collect_data`` replaced by :func:`collect_streamed` on the :class:`_Reader`'s
    positions while quantizing (the class is patched, then restored)."""
    from onnxruntime.quantization.calibrate import HistogramCalibrater

    original = HistogramCalibrater.collect_data

    def collect(self: HistogramCalibrater, reader: _Reader) -> None:
        collect_streamed(self, reader.positions, reader.progress)

    HistogramCalibrater.collect_data = collect
    try:
        yield
    finally:
        HistogramCalibrater.collect_data = original


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls of two activations (attention scores and values): always left in float.

    onnxruntime's ``MatMulConstBOnly`` option is not honoured by the QDQ quantizer, so they are
    excluded by name; quantizing the softmax probabilities alone cost b10c384 a win-rate p99
    error of 0.16.
    """
    consts = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in consts]


def pooled_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls reading a global-pooling ``Concat`` (mean, scaled mean, max: very different ranges
    in one tensor). They are a negligible share of the work; ``static-qlinear`` leaves them float."""
    concat = {o for n in model.graph.node if n.op_type == "Concat" and ".gpool" in n.name for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[0] in concat]


def residual_increments(model: onnx.ModelProto) -> list[str]:
    """Conv/MatMul nodes whose output is added straight into the residual stream (the last conv of
    each residual block): their outputs are the increments that ``static-qlinear`` would round."""
    consts = {i.name for i in model.graph.initializer}
    adds = {i for n in model.graph.node if n.op_type == "Add" and "residual" in n.name for i in n.input}
    return [
        n.name
        for n in model.graph.node
        if n.op_type in ("Conv", "MatMul") and n.input[1] in consts and n.output[0] in adds
    ]


INT8_STATIC_MODES = ("static", "static-mixed", "static-qlinear")


def int8_mode_name(quantize_outputs: bool, float_residual_increments: bool) -> str:
    if not quantize_outputs:
        return "static"
    return "static-mixed" if float_residual_increments else "static-qlinear"


class Int8ModeOptions(TypedDict):
    quantize_outputs: bool
    float_residual_increments: bool


def int8_mode_options(mode: str) -> Int8ModeOptions:
    """:func:`to_int8_static` keyword arguments of a static INT8 mode name (docs/conversion.md)."""
    if mode not in INT8_STATIC_MODES:
        raise ConversionError(f"unknown static INT8 mode {mode!r}; expected one of {list(INT8_STATIC_MODES)}")
    return {"quantize_outputs": mode != "static", "float_residual_increments": mode == "static-mixed"}


def to_int8_static(
    model: onnx.ModelProto,
    calibration: PositionSet,
    *,
    method: str = "minmax",
    keep_float: Sequence[str] = INT8_FLOAT_GROUPS,
    batch: int = 8,
    percentile: float = 99.999,
    quantize_outputs: bool = False,
    reduce_range: bool = False,
    signed_activations: bool = False,
    weight_rounding: str = "nearest",
    bias_correction: bool = False,
    exclude_nodes: Sequence[str] = (),
    float_residual_increments: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> onnx.ModelProto:
    """Static QDQ INT8 (per-channel weights) calibrated on ``calibration`` (module docstring).

    ``quantize_outputs=False`` (default) quantizes the inputs and weights of Conv/MatMul but keeps
    their outputs in float: onnxruntime then runs MatMuls as ``MatMulIntegerToFloat`` (int8 GEMM,
    fast) but convolutions as dequantize + float Conv. ``True`` also quantizes the outputs so
    convolutions become ``QLinearConv`` (int8 end to end, faster on conv nets) at the price of a
    second rounding of every pre-activation, which measurably hurts accuracy (docs/conversion.md).
    ``float_residual_increments`` (mode ``static-mixed``, with ``quantize_outputs``) leaves the
    layers that write into the residual stream (:func:`residual_increments`) entirely in float:
    the convolutions followed by ReLU run as ``QLinearConv``, the increments are not rounded.

    ``weight_rounding="gptq"`` rounds the INT8 weights with GPTQ on the calibration positions
    (:mod:`agent.backends.onnx.weight_rounding`) instead of to nearest, on the same grid;
    ``bias_correction`` removes the mean output shift of the weight rounding from the biases.

    Memory: percentile/entropy histograms (:func:`histogram_ranges`) and the GPTQ statistics run
    one position at a time (:data:`STREAM_BATCH`); ``batch`` is the run size of min-max
    calibration only. b10c384 with the ``convert`` defaults peaks at 1.28 GB (docs/conversion.md).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise ConversionError(f"unknown calibration method {method!r}; expected one of {list(methods)}")
    if len(calibration) == 0:
        raise ConversionError("INT8 calibration needs at least one position")
    if weight_rounding not in weight_rounding_mod.ROUNDINGS:
        raise ConversionError(
            f"unknown weight rounding {weight_rounding!r}; expected one of {list(weight_rounding_mod.ROUNDINGS)}"
        )
    exclude = nodes_in_groups(model, keep_float) + activation_matmuls(model)
    exclude += [n for n in exclude_nodes if n not in exclude]
    if float_residual_increments:
        exclude += [n for n in residual_increments(model) if n not in exclude]
    if quantize_outputs:
        exclude += [n for n in pooled_matmuls(model) if n not in exclude]
    grid: dict[str, Any] = {}
    if weight_rounding != "nearest" or bias_correction:
        layers = weight_rounding_mod.quantized_layers(model, exclude)
        # one position per run: every layer input of a run is held at once (b10c384, 8 positions:
        # ~1 GB; the statistics themselves, 77 MB)
        stats = weight_rounding_mod.collect_stats(model, layers, calibration, STREAM_BATCH, progress)
        grid = weight_rounding_mod.rounded_weights(model, layers, stats, weight_rounding)
        if bias_correction:
            model = weight_rounding_mod.replace_initializers(
                model, weight_rounding_mod.bias_corrections(model, layers, stats, grid)
            )
        del stats
    extra: dict[str, Any] = {
        "WeightSymmetric": True,
        "ActivationSymmetric": signed_activations,
        "MatMulConstBOnly": True,
        "CalibPercentile": percentile,
    }
    if not quantize_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = ["Conv", "MatMul"]
    if method != "minmax":
        extra["CalibTensorRangeSymmetric"] = False
    with tempfile.TemporaryDirectory(prefix="katago-edge-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, src)
        chatter = io.StringIO()  # the percentile/entropy calibrators print() progress to stdout
        calibrate: dict[str, Any] = {"calibration_data_reader": _Reader(calibration, batch, progress)}
        streamed: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        try:
            with contextlib.redirect_stdout(chatter):
                if (
                    method in HISTOGRAM_METHODS
                    and "calibration_cache_path" in signature(quantize_static).parameters
                ):
                    from onnxruntime.quantization.calibrate import save_tensors_data

                    options = {"symmetric": extra["CalibTensorRangeSymmetric"], "percentile": percentile}
                    ranges = histogram_ranges(src, calibration, methods[method], options, Path(tmp), progress)
                    cache = Path(tmp) / "ranges.json"
                    save_tensors_data(ranges, cache)
                    del ranges
                    calibrate = {"calibration_data_reader": None, "calibration_cache_path": str(cache)}
                elif method in HISTOGRAM_METHODS:
                    streamed = _streamed_collect_data()
            with contextlib.redirect_stdout(chatter), streamed:
                quantize_static(
                    str(src),
                    str(dst),
                    **calibrate,
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv", "MatMul"],
                    per_channel=True,
                    activation_type=QuantType.QInt8 if signed_activations else QuantType.QUInt8,
                    reduce_range=reduce_range,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude,
                    calibrate_method=methods[method],
                    extra_options=extra,
                )
        except Exception as exc:  # onnxruntime raises generic exceptions
            raise ConversionError(f"INT8 static quantization failed: {exc}") from exc
        logger.debug("calibrator output: %s", chatter.getvalue().strip())
        quant = onnx.load(dst)
    if quantize_outputs:
        logger.info("INT8 qlinear: %d ReLU-fed output ranges tightened", share_relu_output_ranges(quant))
    logger.info("INT8: %d input-feature quantizers on 7 bits", seven_bit_input_quantizers(quant))
    if weight_rounding != "nearest":
        replaced = weight_rounding_mod.apply_rounding(quant, model, grid)
        logger.info("INT8 weights: %s rounding of %d layers", weight_rounding, replaced)
    _set_precision(
        quant,
        "int8",
        {
            "katago.int8_mode": int8_mode_name(quantize_outputs, float_residual_increments),
            "katago.weight_rounding": weight_rounding,
            "katago.bias_correction": str(bias_correction).lower(),
            "katago.calibration_method": method,
            "katago.calibration_positions": str(len(calibration)),
            "katago.int8_float_groups": ",".join(keep_float),
        },
    )
    logger.info(
        "INT8 static (%s, %d positions): %d nodes left in float", method, len(calibration), len(exclude)
    )
    return quant


def to_int8_dynamic(model: onnx.ModelProto, keep_float: Sequence[str] = INT8_FLOAT_GROUPS) -> onnx.ModelProto:
    """Weight-only INT8 (dynamic activation ranges), no calibration needed."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = nodes_in_groups(model, keep_float) + activation_matmuls(model)
    with tempfile.TemporaryDirectory(prefix="katago-edge-int8d-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, src)
        try:
            quantize_dynamic(
                str(src),
                str(dst),
                op_types_to_quantize=["Conv", "MatMul"],
                per_channel=True,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                extra_options={"MatMulConstBOnly": True},
            )
        except Exception as exc:
            raise ConversionError(f"INT8 dynamic quantization failed: {exc}") from exc
        quant = onnx.load(dst)
    _set_precision(quant, "int8", {"katago.int8_mode": "dynamic"})
    return quant


def share_relu_output_ranges(quant: onnx.ModelProto) -> int:
    """Give a quantized Conv/MatMul output the range of the ReLU input quantizer that follows it.

    In ``static-qlinear`` graphs a convolution followed by ReLU (and the board-mask multiply) is
    quantized twice: its output with the calibrated ``[min, max]`` range including the negative
    part, then the next layer's input with ``[0, max]``. Using the second quantizer's scale and
    zero point for the first makes the saturation at zero do the ReLU exactly, spends all 256
    levels on the values that survive it, and turns the second quantization into a no-op (same
    grid; the mask multiplies by 0 or 1). Returns the number of outputs changed.
    """
    graph = quant.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    producers = {o: n for n in graph.node for o in n.output}

    def only(tensor: str, op: str) -> onnx.NodeProto | None:
        users = consumers.get(tensor, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    changed = 0
    for q1 in graph.node:
        if q1.op_type != "QuantizeLinear" or producers.get(q1.input[0]) is None:
            continue
        if producers[q1.input[0]].op_type not in ("Conv", "MatMul"):
            continue
        d1 = only(q1.output[0], "DequantizeLinear")
        relu = only(d1.output[0], "Relu") if d1 is not None else None
        if relu is None:
            continue
        tail = relu.output[0]
        mask = only(tail, "Mul")
        if mask is not None:
            tail = mask.output[0]
        q2 = only(tail, "QuantizeLinear")
        if q1.input[1] not in inits or len(q1.input) < 3 or q1.input[2] not in inits:
            continue
        if q2 is not None and q2.input[1] in inits and len(q2.input) > 2 and q2.input[2] in inits:
            scale = onnx.numpy_helper.to_array(inits[q2.input[1]])
            zero = onnx.numpy_helper.to_array(inits[q2.input[2]])
        else:  # no quantizer after the ReLU: [0, max] of the calibrated range
            old_scale = onnx.numpy_helper.to_array(inits[q1.input[1]])
            old_zero = onnx.numpy_helper.to_array(inits[q1.input[2]])
            if old_zero.dtype != np.uint8:
                continue
            top = float(old_scale) * (255.0 - float(old_zero))
            if top <= 0:
                continue
            scale = np.array(top / 255.0, dtype=old_scale.dtype)
            zero = np.zeros_like(old_zero)
        inits[q1.input[1]].CopyFrom(onnx.numpy_helper.from_array(scale, q1.input[1]))
        inits[q1.input[2]].CopyFrom(onnx.numpy_helper.from_array(zero, q1.input[2]))
        changed += 1
    return changed


IM2COL_MARK = ".im2col/"
DATA_MOVEMENT = ("Reshape", "Transpose", "Pad", "Gather", "Slice", "Identity")


def seven_bit_input_quantizers(quant: onnx.ModelProto) -> int:
    """Give the UINT8 quantizers of the network's inputs (``spatial``, ``global``, and tensors only
    moved from them) a 7-bit grid: the same range over 0..127 instead of 0..255. Returns the count.

    x86 CPUs without VNNI multiply UINT8 x INT8 with ``vpmaddubsw``, which adds two products
    into a saturating int16: ``255 * 127 * 2`` overflows. Trunk activations are rarely near 255,
    but the input features are 0/1 planes quantized to exactly 255: b6c96's initial convolution
    went from a policy logit error of 1.5 (reference kernels) to 10.9 (onnxruntime's fused int8
    GEMM on an AVX2 machine). On 0..127 two products stay below 2^15; 0/1 features are
    represented exactly either way.
    """
    graph = quant.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    inputs = {i.name for i in graph.input}
    changed = 0
    done: set[str] = set()
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or len(q.input) < 3 or q.input[1] in done:
            continue
        tensor = q.input[0]
        while tensor in producer and producer[tensor].op_type in DATA_MOVEMENT:
            tensor = producer[tensor].input[0]
        if tensor not in inputs or q.input[1] not in inits or q.input[2] not in inits:
            continue
        scale = float(onnx.numpy_helper.to_array(inits[q.input[1]]))
        zero = onnx.numpy_helper.to_array(inits[q.input[2]])
        if zero.dtype != np.uint8:
            continue
        low, high = -float(zero) * scale, (255.0 - float(zero)) * scale
        new_scale = (high - low) / 127.0
        new_zero = np.uint8(round(-low / new_scale))
        scale_dtype = onnx.numpy_helper.to_array(inits[q.input[1]]).dtype
        inits[q.input[1]].CopyFrom(onnx.numpy_helper.from_array(np.array(new_scale, scale_dtype), q.input[1]))
        inits[q.input[2]].CopyFrom(onnx.numpy_helper.from_array(np.array(new_zero, np.uint8), q.input[2]))
        done.add(q.input[1])
        changed += 1
    return changed


def quantize_before_im2col(quant: onnx.ModelProto) -> int:
    """Move each activation ``QuantizeLinear`` that reads an im2col (``graph.GraphBuilder.im2col_of``:
    Reshape, Pad, Reshape, Gather, Reshape) up to the im2col's input, in place.

    The QDQ quantizer puts the quantizer on the MatMul's input, the im2col output, which is k*k
    times larger than the tensor it was gathered from; quantizing first gathers bytes instead of
    floats and quantizes k*k times fewer values. Exact: the quantizer is elementwise, and the
    padding is the zero point (the quantized 0). Run it on the final graph (after
    :func:`agent.backends.onnx.sensitivity.with_float_nodes`, which rewires float nodes to the
    quantizer's input); float readers of the im2col keep the float one. Returns the number moved.
    """
    graph = quant.graph
    producer = {o: n for n in graph.node for o in n.output}
    moved = 0
    new_nodes: list[onnx.NodeProto] = []
    for q in list(graph.node):
        new_nodes.append(q)
        if q.op_type != "QuantizeLinear" or len(q.input) < 3:
            continue
        chain: list[onnx.NodeProto] = []
        tensor = q.input[0]
        for op in ("Reshape", "Gather", "Reshape", "Pad", "Reshape"):
            node = producer.get(tensor)
            if node is None or node.op_type != op or IM2COL_MARK not in node.name:
                break
            chain.append(node)
            tensor = node.input[0]
        if len(chain) != 5:
            continue
        source_q = f"{q.output[0]}/before_im2col"
        q.input[0], out = tensor, q.output[0]
        q.output[0] = source_q
        current = source_q
        for node in reversed(chain):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = f"{node.name}/int8"
            inputs = [current, *node.input[1:]]
            if node.op_type == "Pad":
                inputs = [current, node.input[1], q.input[2]]  # pad with the zero point
            del copy.input[:]
            copy.input.extend(inputs)
            copy.output[0] = out if node is chain[0] else f"{node.output[0]}/int8"
            current = copy.output[0]
            new_nodes.append(copy)
        moved += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    prune_graph(graph)
    if moved:
        props = {p.key: p.value for p in quant.metadata_props}
        props["katago.int8_convs"] = "im2col"
        onnx.helper.set_model_props(quant, props)
    return moved


def prune_graph(graph: onnx.GraphProto, *, initializers: bool = False) -> None:
    """Remove nodes whose outputs nobody reads (repeatedly); with ``initializers``, then the
    initializers nobody reads."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    if initializers:
        used = {i for n in graph.node for i in n.input}
        for init in [i for i in graph.initializer if i.name not in used]:
            graph.initializer.remove(init)


def float_im2col_as_conv(model: onnx.ModelProto) -> int:
    """Turn each float MatMul that reads an im2col back into a ``Conv`` (with transposes from and
    to ``[N, S, C]``), in place; returns the number replaced.

    Layers kept in float by the sensitivity pass run faster as onnxruntime's NCHWc ``Conv`` than as
    an im2col of floats and a float MatMul (b6c96 FP32: 0.83x / 0.61x the Conv graph's speed at
    batch 1 / 8 when every conv is im2col); the same function, up to float rounding.
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    replaced = 0
    new_nodes: list[onnx.NodeProto] = []
    helper = onnx.helper
    for node in list(graph.node):
        chain = _im2col_chain(producer, inits, node.input[0]) if node.op_type == "MatMul" else None
        if chain is None or node.input[1] not in inits:
            new_nodes.append(node)
            continue
        source, (height, width, cin), (py, px) = chain
        w = inits[node.input[1]]
        ky, kx = 2 * py + 1, 2 * px + 1
        kernel = w.reshape(ky, kx, cin, w.shape[1]).transpose(3, 2, 0, 1)
        base = f"{node.name.rsplit('/', 1)[0]}.conv"
        t = {
            s: f"{base}/{s}"
            for s in ("to_ncs", "nchw", "Conv", "ncs", "to_nsc", "w", "shape_in", "shape_out")
        }
        graph.initializer.extend(
            [
                onnx.numpy_helper.from_array(np.ascontiguousarray(kernel), t["w"]),
                onnx.numpy_helper.from_array(np.array([0, cin, height, width], np.int64), t["shape_in"]),
                onnx.numpy_helper.from_array(
                    np.array([0, w.shape[1], height * width], np.int64), t["shape_out"]
                ),
            ]
        )
        new_nodes += [
            helper.make_node("Transpose", [source], [t["to_ncs"]], name=t["to_ncs"], perm=[0, 2, 1]),
            helper.make_node("Reshape", [t["to_ncs"], t["shape_in"]], [t["nchw"]], name=t["nchw"]),
            helper.make_node(
                "Conv",
                [t["nchw"], t["w"]],
                [t["Conv"]],
                name=t["Conv"],
                kernel_shape=[ky, kx],
                pads=[py, px, py, px],
            ),
            helper.make_node("Reshape", [t["Conv"], t["shape_out"]], [t["ncs"]], name=t["ncs"]),
            helper.make_node("Transpose", [t["ncs"]], [node.output[0]], name=t["to_nsc"], perm=[0, 2, 1]),
        ]
        replaced += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    prune_graph(graph)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return replaced


def _im2col_chain(
    producer: dict[str, onnx.NodeProto], inits: dict[str, np.ndarray], tensor: str
) -> tuple[str, tuple[int, int, int], tuple[int, int]] | None:
    """For the output of an im2col (``GraphBuilder.im2col_of``): its ``[N, S, C]`` input, the
    ``(H, W, C)`` it was reshaped to and the padding ``(py, px)``; None for any other tensor."""
    nodes = []
    for op in ("Reshape", "Gather", "Reshape", "Pad", "Reshape"):
        node = producer.get(tensor)
        if node is None or node.op_type != op or IM2COL_MARK not in node.name:
            return None
        nodes.append(node)
        tensor = node.input[0]
    grid, pad = nodes[4], nodes[3]
    if grid.input[1] not in inits or pad.input[1] not in inits:
        return None
    _, h, w, c = (int(v) for v in inits[grid.input[1]])
    pads = [int(v) for v in inits[pad.input[1]]]
    return tensor, (h, w, c), (pads[1], pads[2])


def finish_im2col(model: onnx.ModelProto) -> tuple[int, int]:
    """The last step of static INT8 made from the im2col graph, after the float layers are chosen:
    quantizers before the im2col (:func:`quantize_before_im2col`) and float convs back to ``Conv``
    (:func:`float_im2col_as_conv`). Returns both counts."""
    return quantize_before_im2col(model), float_im2col_as_conv(model)
