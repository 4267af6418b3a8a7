"""Structural check of a Core ML package against the ONNX graph built from the same network.

Core ML cannot run a model on Linux (``coremltools`` predicts on macOS only), so ``verify`` on
Linux compares instead, one by one, the saved package's MIL program (read back from the
``.mlpackage`` with coremltools' milproto loader, weights from ``weight.bin``) with the FP32 ONNX
graph of :func:`agent.backends.onnx.builder.build_onnx`, which is itself verified numerically
against KataGo's outputs. For every ONNX node:

* the MIL op of the same name (:func:`agent.backends.coreml.program.mil_name`) exists and has the
  matching type (:data:`~agent.backends.coreml.program.MIL_OP`);
* each input is the same: a tensor input comes from the op of the same name (casts of the FP16
  pass are looked through), a float constant (weight, bias, epsilon, mask constant, RoPE table)
  has the same shape and the same values, to the precision's tolerance: FP32 exactly, FP16 to
  half-precision rounding, INT8 to half a quantization step of its channel (plus FP16
  rounding of the weight and of the scale) (and the quantization
  must be symmetric: zero points 0);
* attributes: Transpose ``perm``, Softmax/Concat/Split/Gather ``axis``, Conv ``pads``, the axes
  of reductions and Unsqueeze;
* the output shape (every dimension but the batch).

MIL ops that match no ONNX node (other than constants, casts and weight dequantization) fail it
too. Deliberately broken programs (an op removed, a weight transposed, an epsilon changed) fail
(tests/backends/coreml/test_structure.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.backends.coreml.builder import import_coremltools, origin
from agent.backends.coreml.program import MIL_INPUTS, MIL_OP, mil_name
from agent.errors import ConversionError

#: MIL op types that carry no ONNX node: constants, the FP16 pass's casts, weight dequantization
_PLUMBING = ("const", "cast")
_MAX_LISTED = 20


@dataclass
class StructureReport:
    """What the check compared and what differed (empty ``mismatches`` = passed)."""

    precision: str
    ops_checked: int = 0
    weights_checked: int = 0
    int8_weights: int = 0
    fp16_ops: int = 0
    op_counts: dict[str, int] = field(default_factory=dict)  # MIL op type -> count (no consts)
    mismatches: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.mismatches

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "structural",
            "passed": self.passed,
            "precision": self.precision,
            "ops_checked": self.ops_checked,
            "weights_checked": self.weights_checked,
            "int8_weights": self.int8_weights,
            "fp16_ops": self.fp16_ops,
            "op_counts": dict(sorted(self.op_counts.items())),
            "mismatches": self.mismatches[:_MAX_LISTED],
            "mismatch_count": len(self.mismatches),
        }

    def summary(self) -> str:
        head = (
            f"structural check ({self.precision}): {self.ops_checked} ops, {self.weights_checked} "
            f"constants compared with the ONNX graph"
        )
        if self.passed:
            return f"{head} -> PASSED"
        return f"{head} -> FAILED ({len(self.mismatches)}): " + "; ".join(self.mismatches[:5])


def load_program(package: Path) -> Any:
    """The MIL program saved in ``package`` (weights read from its ``weight.bin``)."""
    ct = import_coremltools()
    from coremltools.converters.mil.frontend.milproto import load as milproto

    try:
        spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
        weights = package / "Data" / "com.apple.CoreML" / "weights"
        return milproto.load(spec, spec.specificationVersion, file_weights_dir=str(weights))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ConversionError(f"{package}: cannot read the Core ML program: {exc}") from exc


def package_metadata(package: Path) -> dict[str, str]:
    ct = import_coremltools()
    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    return dict(spec.description.metadata.userDefined)


@dataclass(frozen=True)
class _Value:
    """A resolved MIL input: a producer op name (and output index) or a constant."""

    producer: str | None = None
    index: int = 0
    array: npt.NDArray[Any] | None = None
    step: npt.NDArray[Any] | None = None  # INT8: the per-channel scale, broadcastable
    scale_fp16: bool = False  # INT8: the scale is stored in FP16
    problem: str | None = None


def _resolve(var: Any) -> _Value:
    """Follow casts up to a producer, a constant or a dequantized INT8 constant."""
    while True:
        op = var.op
        if op is None:  # a function input
            return _Value(producer=var.name)
        if op.op_type == "cast":
            var = op.inputs["x"]
            continue
        if op.op_type == "const":
            return _Value(array=np.asarray(op.outputs[0].val))
        if op.op_type == "constexpr_affine_dequantize":
            return _dequantize(op)
        return _Value(producer=origin(op.name), index=list(op.outputs).index(var))


def _dequantize(op: Any) -> _Value:
    q = np.asarray(op.inputs["quantized_data"].val)
    zp = np.asarray(op.inputs["zero_point"].val)
    raw_scale = np.asarray(op.inputs["scale"].val)
    scale = raw_scale.astype(np.float64)
    axis = int(op.inputs["axis"].val)
    shape = [1] * q.ndim
    shape[axis] = -1
    problem = None
    if q.dtype != np.int8:
        problem = f"{origin(op.name)}: quantized weight is {q.dtype}, expected int8"
    elif np.any(zp != 0):
        problem = f"{origin(op.name)}: INT8 zero points not 0 (not symmetric)"
    elif scale.size != q.shape[axis]:
        problem = f"{origin(op.name)}: {scale.size} scales for {q.shape[axis]} channels (not per channel)"
    deq = (q.astype(np.float64) - zp.reshape(shape)) * scale.reshape(shape)
    return _Value(
        array=deq,
        step=np.abs(scale.reshape(shape)),
        scale_fp16=raw_scale.dtype == np.float16,
        problem=problem,
    )


def _close(got: _Value, want: npt.NDArray[Any]) -> str | None:
    """None when ``got`` holds ``want`` to its precision's tolerance, else what differs."""
    assert got.array is not None
    a = np.asarray(got.array, np.float64)
    b = np.asarray(want, np.float64)
    if a.shape != b.shape:
        return f"shape {list(a.shape)}, expected {list(b.shape)}"
    if got.step is not None:
        # half a step, plus the FP16 rounding of the weight before quantization and of the
        # scale, times 127 steps at most (an FP16 scale below 6.1e-5 is subnormal: its rounding
        # is 2^-25 absolute, up to 1 % of a tiny channel's scale)
        scale_error = np.maximum(got.step * 2.0**-11, 2.0**-25) if got.scale_fp16 else got.step * 1e-7
        tol = 0.5 * got.step + 127 * scale_error + np.abs(b) * 2.0**-10 + 1e-7
    elif got.array.dtype == np.float16:
        tol = np.abs(b) * 2.0**-10 + 6e-8
    else:
        tol = np.abs(b) * 1e-6
    bad = np.abs(a - b) > tol
    if np.any(bad):
        i = int(np.argmax(np.abs(a - b) - tol))
        return f"{int(bad.sum())} of {b.size} values differ (e.g. {a.flat[i]:.6g} vs {b.flat[i]:.6g})"
    return None


def _onnx_shapes(model: Any) -> dict[str, list[int | None]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    out: dict[str, list[int | None]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return out


def _mil_shape(var: Any) -> list[int | None]:
    return [int(d) if isinstance(d, int | np.integer) else None for d in var.shape]


def check_structure(program: Any, onnx_model: Any, precision: str) -> StructureReport:
    """Compare the MIL ``program`` with ``onnx_model`` op by op (see the module docstring)."""
    from onnx import numpy_helper

    report = StructureReport(precision)
    ops = list(program.functions["main"].operations)
    by_name: dict[str, Any] = {}
    for op in ops:
        report.op_counts[op.op_type] = report.op_counts.get(op.op_type, 0) + (op.op_type != "const")
        if op.op_type in _PLUMBING or op.op_type.startswith("constexpr_"):
            continue
        if op.outputs and any(_is_fp16(v) for v in op.outputs):
            report.fp16_ops += 1
        by_name[origin(op.name)] = op
    report.op_counts = {k: v for k, v in report.op_counts.items() if v}
    inits = {t.name: numpy_helper.to_array(t) for t in onnx_model.graph.initializer}
    producers: dict[str, tuple[str, int]] = {}
    for node in onnx_model.graph.node:
        for i, out in enumerate(node.output):
            producers[out] = (_op_key(node), i)
    for inp in onnx_model.graph.input:
        producers[inp.name] = (mil_name(inp.name), 0)
    shapes = _onnx_shapes(onnx_model)
    live = _live_nodes(onnx_model)
    silu = _silu_pairs(onnx_model)
    seen: set[str] = set()
    for node in onnx_model.graph.node:
        if node.name not in live or node.name in silu.values():
            # unused (mask tensors a conv net never reads): optional; a SiLU's Sigmoid: in the silu
            seen.add(_op_key(node))
            continue
        key = _op_key(node)
        seen.add(key)
        op = by_name.get(key)
        if op is None:
            report.mismatches.append(f"{node.name}: no MIL op {key}")
            continue
        report.ops_checked += 1
        expected = "silu" if node.name in silu else MIL_OP.get(node.op_type)
        if op.op_type != expected:
            report.mismatches.append(f"{node.name}: MIL op {op.op_type}, expected {expected}")
            continue
        if node.name in silu:  # silu(x): x is the Mul's input that is not the Sigmoid
            node = _silu_node(node, silu[node.name])
        report.mismatches += _check_inputs(node, op, inits, producers, report)
        report.mismatches += _check_attributes(node, op, inits)
        for i, out in enumerate(node.output):
            want = shapes.get(out)
            if want is None or i >= len(op.outputs):
                continue
            got = _mil_shape(op.outputs[i])
            if len(got) != len(want) or any(
                w is not None and g is not None and w != g for g, w in zip(got, want, strict=False)
            ):
                report.mismatches.append(f"{node.name}: output shape {got}, expected {want}")
    for key, op in by_name.items():
        if key not in seen:
            report.mismatches.append(f"{op.name}: MIL op {op.op_type} has no ONNX node")
    return report


def _silu_pairs(model: Any) -> dict[str, str]:
    """``Mul`` node name -> ``Sigmoid`` node name for each ONNX SiLU ``x * Sigmoid(x)``."""
    sigmoids = {n.output[0]: n for n in model.graph.node if n.op_type == "Sigmoid"}
    pairs = {}
    for n in model.graph.node:
        if n.op_type == "Mul" and len(n.input) == 2 and n.input[1] in sigmoids:
            sig = sigmoids[n.input[1]]
            if sig.input[0] == n.input[0]:
                pairs[n.name] = sig.name
    return pairs


def _silu_node(node: Any, sigmoid: str) -> Any:
    """The SiLU ``Mul`` seen as a one-input ``Silu`` node (for the input comparison)."""
    from onnx import helper

    return helper.make_node("Silu", [node.input[0]], list(node.output), name=node.name)


def _live_nodes(model: Any) -> set[str]:
    """Names of the ONNX nodes the graph outputs depend on."""
    wanted = {o.name for o in model.graph.output}
    live: set[str] = set()
    for node in reversed(model.graph.node):
        if any(out in wanted for out in node.output):
            live.add(node.name)
            wanted.update(node.input)
    return live


def _is_fp16(var: Any) -> bool:
    from coremltools.converters.mil.mil import types

    dtype = getattr(var, "dtype", None)
    return bool(dtype is types.fp16)


def _op_key(node: Any) -> str:
    """The MIL name of the op built for an ONNX node (an output's Identity is named as the output)."""
    if node.op_type == "Identity" and node.name.startswith("output/"):
        return mil_name(node.output[0])
    return mil_name(node.name)


def _check_inputs(
    node: Any,
    op: Any,
    inits: dict[str, npt.NDArray[Any]],
    producers: dict[str, tuple[str, int]],
    report: StructureReport,
) -> list[str]:
    problems: list[str] = []
    if node.op_type == "Concat":
        pairs = list(zip(node.input, op.inputs["values"], strict=False))
        if len(node.input) != len(op.inputs["values"]):
            problems.append(f"{node.name}: {len(op.inputs['values'])} inputs, expected {len(node.input)}")
    else:
        params = MIL_INPUTS.get(node.op_type, ("x",))
        pairs = []
        for i, param in enumerate(params):
            if i >= len(node.input) or not node.input[i]:
                if op.inputs.get(param) is not None:
                    problems.append(f"{node.name}: MIL has a {param} input the ONNX node lacks")
                continue
            var = op.inputs.get(param)
            if var is None:
                problems.append(f"{node.name}: MIL op lacks input {param}")
                continue
            pairs.append((node.input[i], var))
    for name, var in pairs:
        got = _resolve(var)
        if got.problem:
            problems.append(got.problem)
        if got.step is not None:
            report.int8_weights += 1
        want = inits.get(name)
        if want is not None and np.issubdtype(want.dtype, np.floating):
            report.weights_checked += 1
            if got.array is None:
                problems.append(
                    f"{node.name}: input {name} is computed by {got.producer}, expected a constant"
                )
                continue
            diff = _close(got, want)
            if diff:
                problems.append(f"{node.name}: constant {name}: {diff}")
        elif want is None:
            expected = producers.get(name)
            if got.array is not None:
                problems.append(f"{node.name}: input {name} is a constant in MIL")
            elif expected is not None and (got.producer, got.index) != expected:
                problems.append(f"{node.name}: input from {got.producer}, expected {expected[0]}")
    return problems


def _check_attributes(node: Any, op: Any, inits: dict[str, npt.NDArray[Any]]) -> list[str]:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type in ("ReduceSum", "Unsqueeze") and len(node.input) > 1 and node.input[1] in inits:
        attrs["axes"] = [int(a) for a in inits[node.input[1]]]
    problems: list[str] = []

    def same(param: str, want: Any) -> None:
        var = op.inputs.get(param)
        got = None if var is None or var.val is None else np.asarray(var.val).tolist()
        if got != want:
            problems.append(f"{node.name}: {param} {got}, expected {want}")

    if node.op_type == "Transpose":
        same("perm", list(attrs["perm"]))
    elif node.op_type in ("Softmax", "Concat", "Split", "Gather"):
        rank = len(op.outputs[0].shape)
        axis = int(attrs["axis"])
        var = op.inputs.get("axis")
        got = None if var is None or var.val is None else int(var.val)
        if got is None or got % rank != axis % rank:
            problems.append(f"{node.name}: axis {got}, expected {axis}")
    elif node.op_type == "Conv":
        top, left, bottom, right = attrs["pads"]
        same("pad", [top, bottom, left, right])
    elif node.op_type in ("ReduceSum", "ReduceMean", "ReduceMax"):
        same("axes", list(attrs["axes"]))
        same("keep_dims", bool(attrs.get("keepdims", 1)))
    elif node.op_type == "Unsqueeze":
        same("axes", list(attrs["axes"]))
    return problems
