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
:mod:`agent.network.positions`) with min-max, percentile or entropy ranges. Only ``Conv`` and
``MatMul`` with constant weights are quantized (the attention score/value MatMuls multiply two
activations and stay FP32). Layers measured to quantize badly are left in float by default;
:data:`INT8_FLOAT_GROUPS` documents them.

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
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from agent.errors import ConversionError
from agent.network.positions import PositionSet

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")

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


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls of two activations (attention scores and values): always left in float.

    onnxruntime's ``MatMulConstBOnly`` option is not honoured by the QDQ quantizer, so they are
    excluded by name; quantizing the softmax probabilities alone cost b10c384 a win-rate p99
    error of 0.16.
    """
    consts = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in consts]


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
    progress: Callable[[int, int], None] | None = None,
) -> onnx.ModelProto:
    """Static QDQ INT8 (per-channel weights) calibrated on ``calibration`` (module docstring).

    ``quantize_outputs=False`` (default) quantizes the inputs and weights of Conv/MatMul but keeps
    their outputs in float: onnxruntime then runs MatMuls as ``MatMulIntegerToFloat`` (int8 GEMM,
    fast) but convolutions as dequantize + float Conv. ``True`` also quantizes the outputs so
    convolutions become ``QLinearConv`` (int8 end to end, faster on conv nets) at the price of a
    second rounding of every pre-activation, which measurably hurts accuracy (docs/conversion.md).
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
    exclude = nodes_in_groups(model, keep_float) + activation_matmuls(model)
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
        try:
            with contextlib.redirect_stdout(chatter):
                quantize_static(
                    str(src),
                    str(dst),
                    _Reader(calibration, batch, progress),
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
    _set_precision(
        quant,
        "int8",
        {
            "katago.int8_mode": "static-qlinear" if quantize_outputs else "static",
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
