"""TFLite builtin operators with shape inference, over :class:`~agent.backends.tflite.flatbuf.ModelBuilder`.

Each method adds one operator (and its output tensor) and returns the output. Shapes carry
``BATCH`` (-1) in the batch axis; broadcasting follows numpy's rules. Only operators that LiteRT's
builtin kernels and its XNNPACK delegate both run are offered, with the options TensorFlow's own
converter writes for the same computation (``FULLY_CONNECTED`` with ``keep_num_dims`` on 3-D
inputs, ``BATCH_MATMUL`` with ``adj_y`` for ``q @ k^T``, ``REDUCE_MAX``/``SUM``/``MEAN`` with
constant axes).

``weights="fp16"`` stores the filters of convolutions and fully-connected layers as float16 behind
a ``DEQUANTIZE`` (TFLite's float16-weights format: XNNPACK unpacks them to float32 once, when the
interpreter is prepared, so the file is half the size and runs at float32 speed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from agent.backends.tflite.flatbuf import BATCH, OP_NAMES, ModelBuilder, Quant, Tensor

BuiltinOp = schema.BuiltinOperator
Act = schema.ActivationFunctionType
_OPTIONS = schema.BuiltinOptions


def broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """Numpy broadcasting of two shapes where ``BATCH`` matches 1 or ``BATCH``."""
    rank = max(len(a), len(b))
    a2, b2 = (1,) * (rank - len(a)) + a, (1,) * (rank - len(b)) + b
    out = []
    for x, y in zip(a2, b2, strict=True):
        if BATCH in (x, y):
            out.append(BATCH)
        elif x != y and 1 not in (x, y):
            raise ValueError(f"shapes {a} and {b} do not broadcast")
        else:
            out.append(max(x, y))
    return tuple(out)


class Ops:
    """Operator emitters; ``weights`` is ``"fp32"`` or ``"fp16"`` (storage of conv/FC filters)."""

    def __init__(self, mb: ModelBuilder, weights: str = "fp32") -> None:
        self.mb = mb
        self.weights = weights
        self._count = 0

    def _name(self, base: str) -> str:
        self._count += 1
        return f"{base}_{self._count}"

    def _out(self, name: str, shape: tuple[int, ...], quant: Quant | None = None) -> Tensor:
        dtype = np.float32 if quant is None else np.int8
        return self.mb.activation(self._name(name), shape, dtype, quant)

    # -- constants ----------------------------------------------------------------------------------
    def const(self, name: str, value: Any) -> Tensor:
        return self.mb.constant(name, np.asarray(value, np.float32))

    def scalar(self, value: float) -> Tensor:
        return self.mb.constant(f"scalar_{value:g}", np.array([value], np.float32))

    def weight(self, name: str, value: np.ndarray) -> Tensor:
        """A filter: float32, or float16 + ``DEQUANTIZE`` (dequantized once at prepare)."""
        if self.weights != "fp16":
            return self.const(name, value)
        return self.half(name, value)

    def half(self, name: str, value: np.ndarray) -> Tensor:
        """A float32 constant stored as float16 + ``DEQUANTIZE``."""
        half = self.mb.constant(name + "_fp16", np.asarray(value, np.float32).astype(np.float16))
        out = self.mb.activation(name, half.shape)
        self.mb.op(BuiltinOp.DEQUANTIZE, [half], [out], version=3)
        return out

    # -- elementwise --------------------------------------------------------------------------------
    def binary(self, kind: int, a: Tensor, b: Tensor, act: int = Act.NONE, name: str = "") -> Tensor:
        out = self._out(name or OP_NAMES.get(kind, "op").lower(), broadcast(a.shape, b.shape))
        options: Any = None
        options_type = 0
        if kind == BuiltinOp.ADD:
            options, options_type = schema.AddOptionsT(), _OPTIONS.AddOptions
        elif kind == BuiltinOp.MUL:
            options, options_type = schema.MulOptionsT(), _OPTIONS.MulOptions
        elif kind == BuiltinOp.SUB:
            options, options_type = schema.SubOptionsT(), _OPTIONS.SubOptions
        elif kind == BuiltinOp.DIV:
            options, options_type = schema.DivOptionsT(), _OPTIONS.DivOptions
        elif kind in (BuiltinOp.MAXIMUM, BuiltinOp.MINIMUM):
            options, options_type = schema.MaximumMinimumOptionsT(), _OPTIONS.MaximumMinimumOptions
        if options is not None and hasattr(options, "fusedActivationFunction"):
            options.fusedActivationFunction = act
        self.mb.op(kind, [a, b], [out], options, options_type)
        return out

    def add(self, a: Tensor, b: Tensor, act: int = Act.NONE) -> Tensor:
        return self.binary(BuiltinOp.ADD, a, b, act)

    def mul(self, a: Tensor, b: Tensor) -> Tensor:
        return self.binary(BuiltinOp.MUL, a, b)

    def sub(self, a: Tensor, b: Tensor) -> Tensor:
        return self.binary(BuiltinOp.SUB, a, b)

    def unary(self, kind: int, x: Tensor) -> Tensor:
        out = self._out(OP_NAMES.get(kind, "op").lower(), x.shape)
        self.mb.op(kind, [x], [out])
        return out

    # -- layers -------------------------------------------------------------------------------------
    def conv2d(
        self,
        x: Tensor,
        filt: Tensor,
        bias: Tensor | None,
        dilation: tuple[int, int] = (1, 1),
        act: int = Act.NONE,
        name: str = "conv",
        out_quant: Quant | None = None,
    ) -> Tensor:
        """Stride 1, "same" padding; ``filt`` is ``[outC, kY, kX, inC]`` (OHWI). With ``out_quant``
        the op is int8: int8 input and filter (per channel), int32 bias, int8 output."""
        out = self._out(name, (*x.shape[:3], filt.shape[0]), out_quant)
        opts = schema.Conv2DOptionsT()
        opts.padding = schema.Padding.SAME
        opts.strideW = opts.strideH = 1
        opts.dilationHFactor, opts.dilationWFactor = dilation
        opts.fusedActivationFunction = act
        version = 1 if out_quant is None else 3
        self.mb.op(BuiltinOp.CONV_2D, [x, filt, bias], [out], opts, _OPTIONS.Conv2DOptions, version)
        return out

    def fully_connected(
        self,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        act: int = Act.NONE,
        name: str = "fc",
        out_quant: Quant | None = None,
        hybrid: bool = False,
    ) -> Tensor:
        """``x @ weight.T + bias`` over the last axis; ``weight`` is ``[out, in]`` (int8 like
        :meth:`conv2d` with ``out_quant``; ``hybrid``: int8 weight, float in and out, the input
        quantized per row at run time)."""
        out = self._out(name, (*x.shape[:-1], weight.shape[0]), out_quant)
        opts = schema.FullyConnectedOptionsT()
        opts.fusedActivationFunction = act
        opts.keepNumDims = x.rank > 2
        opts.asymmetricQuantizeInputs = hybrid
        self.mb.op(
            BuiltinOp.FULLY_CONNECTED,
            [x, weight, bias],
            [out],
            opts,
            _OPTIONS.FullyConnectedOptions,
            version=5 if x.rank > 2 or out_quant is not None else 1,
        )
        return out

    def quantize(self, x: Tensor, quant: Quant) -> Tensor:
        """float32 -> int8 with ``quant``'s scale and zero point."""
        out = self._out("quantize", x.shape, quant)
        self.mb.op(BuiltinOp.QUANTIZE, [x], [out], version=2)
        return out

    def dequantize(self, x: Tensor, name: str = "dequantize") -> Tensor:
        out = self._out(name, x.shape)
        self.mb.op(BuiltinOp.DEQUANTIZE, [x], [out], version=2)
        return out

    def batch_matmul(self, a: Tensor, b: Tensor, adj_y: bool = False) -> Tensor:
        cols = b.shape[-2] if adj_y else b.shape[-1]
        out = self._out("bmm", (*broadcast(a.shape[:-2], b.shape[:-2]), a.shape[-2], cols))
        opts = schema.BatchMatMulOptionsT()
        opts.adjX, opts.adjY = False, adj_y
        self.mb.op(BuiltinOp.BATCH_MATMUL, [a, b], [out], opts, _OPTIONS.BatchMatMulOptions)
        return out

    def softmax(self, x: Tensor) -> Tensor:
        out = self._out("softmax", x.shape)
        opts = schema.SoftmaxOptionsT()
        opts.beta = 1.0
        self.mb.op(BuiltinOp.SOFTMAX, [x], [out], opts, _OPTIONS.SoftmaxOptions)
        return out

    # -- shapes -------------------------------------------------------------------------------------
    def reshape(self, x: Tensor, shape: tuple[int, ...], name: str = "reshape") -> Tensor:
        return self._with_ints(BuiltinOp.RESHAPE, x, ("shape", shape), shape, name)

    def transpose(self, x: Tensor, perm: tuple[int, ...]) -> Tensor:
        return self._with_ints(BuiltinOp.TRANSPOSE, x, ("perm", perm), tuple(x.shape[p] for p in perm))

    def _with_ints(
        self, kind: int, x: Tensor, ints: tuple[str, tuple[int, ...]], shape: tuple[int, ...], name: str = ""
    ) -> Tensor:
        """``RESHAPE`` / ``TRANSPOSE`` of ``x`` with their int32 operand (``ints``: name, values)."""
        out = self._out(name or OP_NAMES[kind].lower(), shape)
        if kind == BuiltinOp.RESHAPE:
            options, options_type = schema.ReshapeOptionsT(), _OPTIONS.ReshapeOptions
        else:
            options, options_type = schema.TransposeOptionsT(), _OPTIONS.TransposeOptions
        self.mb.op(kind, [x, self.mb.int32(ints[0], list(ints[1]))], [out], options, options_type)
        return out

    def reduce(self, kind: int, x: Tensor, axes: tuple[int, ...], keep_dims: bool = False) -> Tensor:
        shape = (
            tuple(1 if i in axes else d for i, d in enumerate(x.shape))
            if keep_dims
            else tuple(d for i, d in enumerate(x.shape) if i not in axes)
        )
        out = self._out(OP_NAMES.get(kind, "op").lower(), shape)
        opts = schema.ReducerOptionsT()
        opts.keepDims = keep_dims
        self.mb.op(kind, [x, self.mb.int32("axes", list(axes))], [out], opts, _OPTIONS.ReducerOptions)
        return out

    def concat(self, xs: list[Tensor], axis: int) -> Tensor:
        shape = list(xs[0].shape)
        shape[axis] = sum(t.shape[axis] for t in xs)
        out = self._out("concat", tuple(shape))
        opts = schema.ConcatenationOptionsT()
        opts.axis = axis
        self.mb.op(BuiltinOp.CONCATENATION, list(xs), [out], opts, _OPTIONS.ConcatenationOptions)
        return out

    def channel_slice(self, x: Tensor, start: int, stop: int) -> Tensor:
        """``x[..., start:stop]`` of a 4-D tensor (``STRIDED_SLICE``)."""
        out = self._out("slice", (*x.shape[:3], stop - start))
        opts = schema.StridedSliceOptionsT()
        opts.beginMask, opts.endMask = 0b0111, 0b0111
        self.mb.op(
            BuiltinOp.STRIDED_SLICE,
            [
                x,
                self.mb.int32("begin", [0, 0, 0, start]),
                self.mb.int32("end", [0, 0, 0, stop]),
                self.mb.int32("strides", [1, 1, 1, 1]),
            ],
            [out],
            opts,
            _OPTIONS.StridedSliceOptions,
        )
        return out
