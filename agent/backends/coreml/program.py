"""Parsed KataGo network → MIL program (``coremltools``' MIL builder, no PyTorch, no ONNX file).

The network walk is the ONNX builder's (:class:`agent.backends.onnx.builder._Builder`: the same
layers, the same folding of BN into convs, the same masks, RoPE tables and pooling); what it
emits goes through :class:`MilGraphBuilder`, which implements the op-level interface of
:class:`agent.backends.onnx.graph.GraphBuilder` (``op``, ``op_n``, ``const``) with MIL ops. So
every ONNX node of the graph built from the same network has exactly one MIL op, named after it
(:func:`mil_name`), which is what :mod:`agent.backends.coreml.structure` checks one by one.

ONNX op → MIL op (:data:`MIL_OP`); the differences that matter:

* ``Conv`` pads ``[top, left, bottom, right]`` → MIL ``pad=[top, bottom, left, right]``; the
  weight stays ``[Cout, Cin, kY, kX]`` (MIL's layout too);
* ``MatMul`` with a constant ``[in, out]`` weight stays ``matmul`` (not ``linear``, whose weight is
  ``[out, in]``), so weights compare without a transpose;
* ``Reshape``'s ``0`` (copy the batch dimension) → ``-1`` (MIL has no copy marker);
* ``Reciprocal`` → ``inverse`` with ``epsilon=0`` (MIL's default adds 1e-4);
* SiLU, ``Mul(x, Sigmoid(x))`` in ONNX, is one MIL ``silu`` named as the ``Mul``.

Names: ``.``, ``/``, ``,`` and ``-`` become ``_`` (Core ML's own sanitizer would do the same on
save); two ONNX names that collapse to one MIL name are an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from agent.backends.onnx.builder import OUTPUT_NAMES, _Builder
from agent.backends.onnx.graph import GraphBuilder
from agent.errors import ConversionError
from agent.network.model import Activation

if TYPE_CHECKING:
    from agent.network.model import Network

INPUT_SPATIAL = "spatial"
INPUT_GLOBAL = "global"

#: ONNX op type → MIL op type, for every op the ONNX builder emits.
MIL_OP: dict[str, str] = {
    "Add": "add",
    "Sub": "sub",
    "Mul": "mul",
    "Div": "real_div",
    "Pow": "pow",
    "Sqrt": "sqrt",
    "Reciprocal": "inverse",
    "Relu": "relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Softplus": "softplus",
    "Softmax": "softmax",
    "MatMul": "matmul",
    "Conv": "conv",
    "Reshape": "reshape",
    "Transpose": "transpose",
    "Slice": "slice_by_index",
    "ReduceSum": "reduce_sum",
    "ReduceMean": "reduce_mean",
    "ReduceMax": "reduce_max",
    "Concat": "concat",
    "Split": "split",
    "Unsqueeze": "expand_dims",
    "Gather": "gather",
    "Pad": "pad",
    "Identity": "identity",
}
#: ONNX input position → MIL parameter name ("values" collects every input of a Concat).
MIL_INPUTS: dict[str, tuple[str, ...]] = {
    "Conv": ("x", "weight", "bias"),
    "Gather": ("x", "indices"),
    **{op: ("x", "y") for op in ("Add", "Sub", "Mul", "Div", "Pow", "MatMul")},
}
_BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "MatMul"}
_UNARY = {"Sqrt", "Relu", "Sigmoid", "Tanh", "Softplus", "Identity"}


def mil_name(onnx_name: str) -> str:
    """The MIL name of an ONNX node or tensor name (letters, digits and ``_`` only)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", onnx_name)


class MilGraphBuilder(GraphBuilder):
    """:class:`GraphBuilder` whose ops are MIL ops, built inside an open MIL ``Function``.

    Constants are kept as numpy arrays until an op reads one as a tensor (weights, scalars);
    integer constants that are parameters in MIL (shapes, axes, split sizes) are read as values.
    """

    def __init__(self, height: int, width: int, inputs: Mapping[str, Any]) -> None:
        super().__init__(height, width)
        from coremltools.converters.mil import Builder

        self.mb: Any = Builder
        self.arrays: dict[str, npt.NDArray[Any]] = {}
        self.vars: dict[str, Any] = dict(inputs)
        #: MIL op name → ONNX node name
        self.onnx_names: dict[str, str] = {}

    def const(self, base: str, array: npt.ArrayLike, dtype: type = np.float32) -> str:
        name = self.unique(base)
        self.arrays[name] = np.ascontiguousarray(np.asarray(array, dtype))
        return name

    def tensor(self, name: str) -> Any:
        """The MIL variable of a tensor name (a constant becomes a named ``const`` op on first use)."""
        if name not in self.vars:
            if name not in self.arrays:
                raise ConversionError(f"MIL builder: no tensor {name!r}")
            arr = self.arrays[name]
            if arr.dtype == np.int64:
                arr = arr.astype(np.int32)
            self.vars[name] = self.mb.const(val=arr, name=self._claim(name, name))
        return self.vars[name]

    def value(self, name: str) -> npt.NDArray[Any]:
        if name not in self.arrays:
            raise ConversionError(f"MIL builder: {name!r} is not a constant")
        return self.arrays[name]

    def _claim(self, onnx_name: str, mil: str | None = None) -> str:
        mil = mil_name(mil or onnx_name)
        if mil in self.onnx_names:
            raise ConversionError(f"MIL names collide: {onnx_name!r} and {self.onnx_names[mil]!r} -> {mil}")
        self.onnx_names[mil] = onnx_name
        return mil

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        node_name = self.unique(f"{name}/{op_type}")
        self.vars[node_name] = self.emit(op_type, inputs, self._claim(node_name), attrs)
        return node_name

    def op_n(self, op_type: str, inputs: list[str], name: str, n: int, **attrs: Any) -> list[str]:
        node_name = self.unique(f"{name}/{op_type}")
        outs = [f"{node_name}:{i}" for i in range(n)]
        results = self.emit(op_type, inputs, self._claim(node_name), attrs)
        for out, var in zip(outs, results, strict=True):
            self.vars[out] = var
        return outs

    def activation(self, x: str, kind: Activation, name: str) -> str:
        """As the ONNX builder's, except SiLU: one MIL ``silu`` named as the ONNX ``Mul`` (the
        ``Sigmoid`` name is reserved so that later names keep the ONNX numbering). Core ML's
        backend would fuse ``mul(x, sigmoid(x))`` into ``silu`` anyway, on some ops only."""
        if kind != Activation.SILU:
            return super().activation(x, kind, name)
        self.unique(f"{name}/Sigmoid")
        node_name = self.unique(f"{name}/Mul")
        self.vars[node_name] = self.mb.silu(x=self.tensor(x), name=self._claim(node_name))
        return node_name

    def output(self, tensor: str, name: str) -> Any:
        """The graph output ``name`` (the ONNX builder's ``output/<name>`` Identity)."""
        var = self.mb.identity(x=self.tensor(tensor), name=self._claim(f"output/{name}", name))
        self.vars[name] = var
        return var

    def emit(self, op_type: str, inputs: list[str], name: str, attrs: dict[str, Any]) -> Any:
        mb = self.mb
        x = self.tensor(inputs[0])
        if op_type in _BINARY:
            return getattr(mb, MIL_OP[op_type])(x=x, y=self.tensor(inputs[1]), name=name)
        if op_type in _UNARY:
            return getattr(mb, MIL_OP[op_type])(x=x, name=name)
        if op_type == "Reciprocal":
            return mb.inverse(x=x, epsilon=0.0, name=name)
        if op_type == "Conv":
            top, left, bottom, right = attrs["pads"]
            bias = self.tensor(inputs[2]) if len(inputs) > 2 else None
            return mb.conv(
                x=x,
                weight=self.tensor(inputs[1]),
                bias=bias,
                pad_type="custom",
                pad=[top, bottom, left, right],
                name=name,
            )
        if op_type == "Reshape":
            shape = [int(v) for v in self.value(inputs[1])]
            if shape and shape[0] == 0:
                shape[0] = -1
            if any(v == 0 for v in shape[1:]):
                raise ConversionError(f"{name}: Reshape copies a dimension other than the batch")
            return mb.reshape(x=x, shape=shape, name=name)
        if op_type == "Transpose":
            return mb.transpose(x=x, perm=list(attrs["perm"]), name=name)
        if op_type == "Slice":
            starts, ends, axes = (self.value(i) for i in inputs[1:4])
            rank = x.rank
            begin, end, end_mask = [0] * rank, [0] * rank, [True] * rank
            for a, s, e in zip(axes, starts, ends, strict=True):
                begin[int(a)], end[int(a)], end_mask[int(a)] = int(s), int(e), False
            return mb.slice_by_index(x=x, begin=begin, end=end, end_mask=end_mask, name=name)
        if op_type in ("ReduceSum", "ReduceMean", "ReduceMax"):
            axes = self.value(inputs[1]) if len(inputs) > 1 else attrs["axes"]
            keep = bool(attrs.get("keepdims", 1))
            fn = getattr(mb, MIL_OP[op_type])
            return fn(x=x, axes=[int(a) for a in axes], keep_dims=keep, name=name)
        if op_type == "Softmax":
            return mb.softmax(x=x, axis=int(attrs["axis"]), name=name)
        if op_type == "Concat":
            return mb.concat(values=[self.tensor(i) for i in inputs], axis=int(attrs["axis"]), name=name)
        if op_type == "Split":
            sizes = [int(v) for v in self.value(inputs[1])]
            return mb.split(x=x, split_sizes=sizes, axis=int(attrs["axis"]), name=name)
        if op_type == "Unsqueeze":
            return mb.expand_dims(x=x, axes=[int(a) for a in self.value(inputs[1])], name=name)
        if op_type == "Gather":
            return mb.gather(x=x, indices=self.tensor(inputs[1]), axis=int(attrs["axis"]), name=name)
        if op_type == "Pad":
            pads = [int(v) for v in self.value(inputs[1])]
            half = len(pads) // 2
            pad = [p for i in range(half) for p in (pads[i], pads[half + i])]
            return mb.pad(x=x, pad=pad, mode="constant", constant_val=0.0, name=name)
        raise ConversionError(f"{name}: ONNX op {op_type} has no MIL translation")


class _MilBuilder(_Builder):
    """The ONNX builder's network walk, emitting into a :class:`MilGraphBuilder`."""

    g: MilGraphBuilder

    def outputs(self, spatial: str, global_: str) -> list[Any]:
        outs = self.network(spatial, global_)
        return [self.g.output(t, n) for n, t in zip(OUTPUT_NAMES, outs, strict=True)]


def build_program(network: Network, board: int) -> tuple[Any, dict[str, str], dict[str, list[str]]]:
    """The MIL program of ``network`` for a ``board x board`` buffer (dynamic batch); returns it
    with the MIL-name → ONNX-name table and the layer groups (metadata ``katago.layer_groups``)."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program, get_new_symbol

    batch = get_new_symbol()
    specs = {
        INPUT_SPATIAL: mb.placeholder(shape=(batch, network.num_input_channels, board, board)),
        INPUT_GLOBAL: mb.placeholder(shape=(batch, network.num_input_global_channels)),
    }
    with Function(specs, ct.target.iOS16) as func:
        g = MilGraphBuilder(board, board, {k: func.inputs[k] for k in specs})
        walker = _MilBuilder(network, g)
        func.set_outputs(walker.outputs(INPUT_SPATIAL, INPUT_GLOBAL))
    program = Program()
    program.add_function("main", func)
    return program, dict(g.onnx_names), walker.layer_groups()
