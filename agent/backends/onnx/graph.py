"""Op-level helpers for building KataGo graphs with ``onnx.helper`` (no PyTorch).

A :class:`GraphBuilder` accumulates nodes and initializers; every helper returns the name of the
tensor it produced. Tensors flowing through the network are :class:`Act` handles that remember
their **layout**, because the builder mixes two of them:

* ``nchw`` ``[N, C, H, W]``: what ``Conv`` wants (3x3/5x5 convolutions, the heads);
* ``nsc``  ``[N, S, C]`` with ``S = H*W`` positions ``s = y*W + x``: what transformer blocks want
  (per-position MatMuls, attention). 1x1 convolutions and norm+activation work in either.

Switching layout costs one ``Transpose``; :meth:`GraphBuilder.to_layout` does it only when needed,
so a stack of transformer blocks runs without transposes (onnxruntime then fuses the RMSNorm
pattern into ``SimplifiedLayerNormalization`` and Conv+bias+ReLU into ``FusedConv``).

With ``im2col=True`` (the graphs that static INT8 is made from, see
:mod:`agent.backends.onnx.quantize`) a ``k x k`` convolution on an ``nsc`` tensor is an im2col
``Gather`` of the zero-padded input plus one ``MatMul`` with a ``[k*k*C, C']`` weight (rows in
``(dy, dx, c)`` order), so a conv trunk runs in ``nsc`` without a transpose and onnxruntime runs
each quantized convolution as an int8 GEMM with a float output (``MatMulIntegerToFloat``); convs
reading the same tensor with the same kernel share one im2col.

Board mask conventions (spec §2.1): ``mask`` is spatial channel 0; every norm+activation
multiplies by it so that off-board cells feeding a convolution or a pooling step are exactly 0.
Node names start with the KataGo layer name (``model.blocks.3.normactconvp.conv/Conv``), which is
what the FP16 block list and the INT8 exclusion list refer to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.network.model import Activation

Layout = Literal["nchw", "nsc"]
F32 = npt.NDArray[np.float32]

OPSET = 17
#: Additive bias that removes off-board keys from the attention softmax (exp underflows to 0).
ATTENTION_MASK_BIAS = -1.0e9


@dataclass(frozen=True)
class Act:
    """A tensor in the graph: its name, layout and channel count."""

    name: str
    layout: Layout
    channels: int


@dataclass(frozen=True)
class Masks:
    """Mask-derived tensors shared by every layer (built once per graph)."""

    nchw: str  # [N,1,H,W]  1 on board
    nsc: str  # [N,S,1]
    neg: str  # [N,1,H,W]  mask - 1: 0 on board, -1 off board (gpool max trick)
    neg_nsc: str  # [N,S,1]
    key_bias: str  # [N,1,1,S]  0 on board, ATTENTION_MASK_BIAS off board
    area: str  # [N,1]  mask sum A = board area
    area4: str  # [N,1,1,1]
    gpool_scale: str  # [N,1]  (sqrt(A) - 14) * 0.1
    value_scale2: str  # [N,1]  (sqrt(A) - 14)^2 * 0.01 - 0.1


class GraphBuilder:
    """Collects ONNX nodes and initializers for one graph over a fixed ``H x W`` buffer."""

    def __init__(
        self, height: int, width: int, prescale: Mapping[str, F32] | None = None, im2col: bool = False
    ) -> None:
        self.height = height
        self.width = width
        self.im2col = im2col
        self._cols: dict[tuple[str, int, int], str] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._used: set[str] = set()
        self._scalars: dict[tuple[float, str], str] = {}
        self.masks: Masks | None = None
        #: layer name -> per-input-channel s: the layer computes (x / s) @ (s * W), the same
        #: function with flatter activations for INT8 (see agent.backends.onnx.smoothing)
        self.prescale: Mapping[str, F32] = prescale or {}

    # --- naming and constants ---------------------------------------------------------------

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self._used:
            i += 1
            name = f"{base}_{i}"
        self._used.add(name)
        return name

    def const(self, base: str, array: npt.ArrayLike, dtype: type = np.float32) -> str:
        name = self.unique(base)
        self.initializers.append(
            numpy_helper.from_array(np.ascontiguousarray(np.asarray(array, dtype)), name)
        )
        return name

    def scalar(self, value: float) -> str:
        key = (float(value), "f")
        if key not in self._scalars:
            self._scalars[key] = self.const(f"const/{value:g}", np.float32(value))
        return self._scalars[key]

    def ints(self, base: str, values: list[int]) -> str:
        return self.const(base, np.array(values, np.int64), np.int64)

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        """Add one single-output node named ``name/op_type``; returns its output tensor name."""
        node_name = self.unique(f"{name}/{op_type}")
        self.nodes.append(helper.make_node(op_type, inputs, [node_name], name=node_name, **attrs))
        return node_name

    def op_n(self, op_type: str, inputs: list[str], name: str, n: int, **attrs: Any) -> list[str]:
        node_name = self.unique(f"{name}/{op_type}")
        outs = [f"{node_name}:{i}" for i in range(n)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=node_name, **attrs))
        return outs

    # --- mask -------------------------------------------------------------------------------

    def build_masks(self, spatial: str) -> Masks:
        """Derive every mask tensor from spatial channel 0."""
        s = self.height * self.width
        mask = self.op(
            "Slice",
            [
                spatial,
                self.ints("mask/starts", [0]),
                self.ints("mask/ends", [1]),
                self.ints("mask/axes", [1]),
            ],
            "mask",
        )
        flat = self.op("Reshape", [mask, self.ints("mask/shape_ns1", [0, s, 1])], "mask/nsc")
        neg = self.op("Sub", [mask, self.scalar(1.0)], "mask/neg")
        keyb = self.op(
            "Reshape",
            [
                self.op("Mul", [neg, self.scalar(-ATTENTION_MASK_BIAS)], "mask/keybias"),
                self.ints("mask/kshape", [0, 1, 1, s]),
            ],
            "mask/keybias",
        )
        area4 = self.op("ReduceSum", [mask, self.ints("mask/axes123", [1, 2, 3])], "mask/area", keepdims=1)
        area = self.op("Reshape", [area4, self.ints("mask/shape_n1", [0, 1])], "mask/area2")
        sq = self.op("Sub", [self.op("Sqrt", [area], "mask/sqrt_area"), self.scalar(14.0)], "mask/sqrtm14")
        gscale = self.op("Mul", [sq, self.scalar(0.1)], "mask/gpool_scale")
        v2 = self.op(
            "Sub",
            [
                self.op("Mul", [self.op("Mul", [sq, sq], "mask/sq2"), self.scalar(0.01)], "mask/sq2s"),
                self.scalar(0.1),
            ],
            "mask/value_scale2",
        )
        neg_nsc = self.op("Sub", [flat, self.scalar(1.0)], "mask/neg_nsc")
        self.masks = Masks(mask, flat, neg, neg_nsc, keyb, area, area4, gscale, v2)
        return self.masks

    @property
    def m(self) -> Masks:
        if self.masks is None:
            raise RuntimeError("build_masks() must be called first")
        return self.masks

    # --- layout -----------------------------------------------------------------------------

    def to_layout(self, x: Act, layout: Layout) -> Act:
        if x.layout == layout:
            return x
        s = self.height * self.width
        if layout == "nsc":
            flat = self.op(
                "Reshape", [x.name, self.ints("shape/ncs", [0, x.channels, s])], f"{x.name}/to_nsc"
            )
            return Act(self.op("Transpose", [flat], f"{x.name}/to_nsc", perm=[0, 2, 1]), "nsc", x.channels)
        tr = self.op("Transpose", [x.name], f"{x.name}/to_nchw", perm=[0, 2, 1])
        shape = self.ints("shape/nchw", [0, x.channels, self.height, self.width])
        return Act(self.op("Reshape", [tr, shape], f"{x.name}/to_nchw"), "nchw", x.channels)

    def channel_vec(self, base: str, vec: F32, layout: Layout) -> str:
        """A per-channel constant broadcastable against ``layout``."""
        arr = np.asarray(vec, np.float32)
        return self.const(base, arr.reshape(-1, 1, 1) if layout == "nchw" else arr)

    def mask_for(self, layout: Layout) -> str:
        return self.m.nchw if layout == "nchw" else self.m.nsc

    # --- primitive layers -------------------------------------------------------------------

    def activation(self, x: str, kind: Activation, name: str) -> str:
        if kind == Activation.IDENTITY:
            return x
        if kind == Activation.RELU:
            return self.op("Relu", [x], name)
        if kind == Activation.SILU:
            return self.op("Mul", [x, self.op("Sigmoid", [x], name)], name)
        if kind == Activation.MISH:
            soft = self.op("Softplus", [x], name)
            return self.op("Mul", [x, self.op("Tanh", [soft], name)], name)
        raise ValueError(f"unsupported activation {kind!r}")

    def conv(self, x: Act, name: str, weight_kkio: F32, bias: F32 | None = None) -> Act:
        """Convolution from a ``[kY,kX,inC,outC]`` kernel, "same" padding, optional folded bias.

        A 1x1 convolution on an ``nsc`` tensor becomes a MatMul (no transpose needed).
        """
        ky, kx, cin, cout = weight_kkio.shape
        if name in self.prescale:
            sc = self.prescale[name]
            x = Act(
                self.op(
                    "Mul",
                    [x.name, self.channel_vec(f"{name}.prescale", 1.0 / sc, x.layout)],
                    f"{name}.prescale",
                ),
                x.layout,
                x.channels,
            )
            weight_kkio = (weight_kkio * sc[None, None, :, None]).astype(np.float32)
        if x.layout == "nsc" and ((ky == 1 and kx == 1) or self.im2col):
            cols = x.name if ky == 1 and kx == 1 else self.im2col_of(x, ky, kx, name)
            w = weight_kkio.reshape(ky * kx * cin, cout)
            y = self.op("MatMul", [cols, self.const(f"{name}.w", w)], name)
            if bias is not None:
                y = self.op("Add", [y, self.const(f"{name}.b", bias)], name)
            return Act(y, "nsc", cout)
        x = self.to_layout(x, "nchw")
        inputs = [x.name, self.const(f"{name}.w", weight_kkio.transpose(3, 2, 0, 1))]
        if bias is not None:
            inputs.append(self.const(f"{name}.b", bias))
        pads = [ky // 2, kx // 2, ky // 2, kx // 2]
        return Act(self.op("Conv", inputs, name, kernel_shape=[ky, kx], pads=pads), "nchw", cout)

    def im2col_of(self, x: Act, ky: int, kx: int, name: str) -> str:
        """``[N, S, ky*kx*C]``: each position's zero-padded ``ky x kx`` neighbourhood of an ``nsc``
        tensor, rows in ``(dy, dx, c)`` order (one ``Pad`` and one ``Gather``; built once per input
        and kernel, node names ``<first layer>.im2col/...``)."""
        key = (x.name, ky, kx)
        if key in self._cols:
            return self._cols[key]
        h, w, py, px = self.height, self.width, ky // 2, kx // 2
        hp, wp = h + 2 * py, w + 2 * px
        base = f"{name}.im2col"
        grid = self.op("Reshape", [x.name, self.ints(f"shape/nhwc{x.channels}", [0, h, w, x.channels])], base)
        pads = self.ints(f"pads/nhwc{py},{px}", [0, py, px, 0, 0, py, px, 0])
        padded = self.op("Pad", [grid, pads], base)
        flat = self.op(
            "Reshape", [padded, self.ints(f"shape/npc{hp * wp},{x.channels}", [0, hp * wp, x.channels])], base
        )
        index = np.array(
            [
                (y + dy) * wp + (c + dx)
                for y in range(h)
                for c in range(w)
                for dy in range(ky)
                for dx in range(kx)
            ],
            np.int64,
        )
        taps = self.op("Gather", [flat, self.const(f"{base}.index", index, np.int64)], base, axis=1)
        width = ky * kx * x.channels
        cols = self.op("Reshape", [taps, self.ints(f"shape/ns{width}", [0, h * w, width])], base)
        self._cols[key] = cols
        return cols

    def affine_act_mask(self, x: Act, name: str, scale: F32 | None, bias: F32 | None, act: Activation) -> Act:
        """``act(x*scale + bias) * mask`` (KataGo's BNACT); ``scale``/``bias`` None = skip."""
        y = x.name
        if scale is not None:
            y = self.op("Mul", [y, self.channel_vec(f"{name}.scale", scale, x.layout)], name)
        if bias is not None:
            y = self.op("Add", [y, self.channel_vec(f"{name}.bias", bias, x.layout)], name)
        y = self.activation(y, act, name)
        return Act(self.op("Mul", [y, self.mask_for(x.layout)], f"{name}/mask"), x.layout, x.channels)

    def matmul(self, x: str, name: str, weight: F32, bias: F32 | None = None) -> str:
        if name in self.prescale:
            sc = self.prescale[name]
            x = self.op("Mul", [x, self.const(f"{name}.prescale", 1.0 / sc)], f"{name}.prescale")
            weight = (weight * sc[:, None]).astype(np.float32)
        y = self.op("MatMul", [x, self.const(f"{name}.w", weight)], name)
        if bias is not None:
            y = self.op("Add", [y, self.const(f"{name}.b", bias)], name)
        return y

    def add_channel_bias(self, x: Act, vec: str, name: str) -> Act:
        """Add a per-row ``[N, C]`` vector at every position of ``x``."""
        if x.layout == "nchw":
            v = self.op("Unsqueeze", [vec, self.ints("axes/23", [2, 3])], name)
        else:
            v = self.op("Unsqueeze", [vec, self.ints("axes/1", [1])], name)
        return Act(self.op("Add", [x.name, v], name), x.layout, x.channels)

    def residual_add(self, trunk: Act, y: Act, name: str) -> Act:
        y = self.to_layout(y, trunk.layout)
        return Act(self.op("Add", [trunk.name, y.name], f"{name}/residual"), trunk.layout, trunk.channels)

    def rope(self, t: str, cols: int, cos: F32, sin_signed: F32, name: str) -> str:
        """Pair-interleaved RoPE on ``[N, S, cols]``: ``t*cos + swap_pairs(t)*sin_signed``."""
        s = self.height * self.width
        pairs = self.op("Reshape", [t, self.ints(f"shape/pairs{cols}", [0, s, cols // 2, 2])], name)
        a, b = self.op_n("Split", [pairs, self.ints("split/11", [1, 1])], name, 2, axis=-1)
        swapped = self.op("Concat", [b, a], name, axis=-1)
        swapped = self.op("Reshape", [swapped, self.ints(f"shape/ns{cols}", [0, s, cols])], name)
        rot = self.op("Mul", [swapped, self.const(f"{name}.sin", sin_signed)], name)
        return self.op("Add", [self.op("Mul", [t, self.const(f"{name}.cos", cos)], name), rot], name)

    # --- pooling ----------------------------------------------------------------------------

    def _spatial_axes(self, x: Act) -> str:
        return self.ints("axes/23", [2, 3]) if x.layout == "nchw" else self.ints("axes/1", [1])

    def _mean(self, x: Act, name: str) -> str:
        total = self.op("ReduceSum", [x.name, self._spatial_axes(x)], name, keepdims=0)
        return self.op("Div", [total, self.m.area], f"{name}/mean")

    def gpool(self, x: Act, name: str) -> str:
        """KataGo's global pooling of a masked tensor: ``[mean, mean*(sqrt(A)-14)*0.1, max]``, ``[N,3C]``."""
        mean = self._mean(x, name)
        scaled = self.op("Mul", [mean, self.m.gpool_scale], f"{name}/scaled")
        neg = self.m.neg if x.layout == "nchw" else self.m.neg_nsc
        shifted = self.op("Add", [x.name, neg], f"{name}/shift")
        axes = [2, 3] if x.layout == "nchw" else [1]
        mx = self.op("ReduceMax", [shifted], f"{name}/max", axes=axes, keepdims=0)
        return self.op("Concat", [mean, scaled, mx], f"{name}/concat", axis=1)

    def value_pool(self, x: Act, name: str) -> str:
        """Value-head pooling: ``[mean, mean*(sqrt(A)-14)*0.1, mean*((sqrt(A)-14)^2*0.01-0.1)]``."""
        mean = self._mean(x, name)
        s1 = self.op("Mul", [mean, self.m.gpool_scale], f"{name}/scaled1")
        s2 = self.op("Mul", [mean, self.m.value_scale2], f"{name}/scaled2")
        return self.op("Concat", [mean, s1, s2], f"{name}/concat", axis=1)

    # --- norms ------------------------------------------------------------------------------

    def rms_norm_nsc(self, x: Act, name: str, eps: float, weight: F32) -> Act:
        """Per-position RMSNorm over channels in the pattern onnxruntime fuses, 0 off the board.

        Zeroing the off-board rows is not needed for FP32 (off-board keys get probability 0) but
        keeps the residual junk there out of INT8 calibration ranges.
        """
        sq = self.op("Pow", [x.name, self.scalar(2.0)], name)
        ms = self.op("ReduceMean", [sq], name, axes=[-1], keepdims=1)
        rms = self.op("Sqrt", [self.op("Add", [ms, self.scalar(eps)], name)], name)
        y = self.op("Div", [x.name, rms], name)
        y = self.op("Mul", [y, self.const(f"{name}.weight", weight)], name)
        return Act(self.op("Mul", [y, self.m.nsc], f"{name}/mask"), "nsc", x.channels)

    def rms_norm_spatial_stat(self, x: Act, name: str, eps: float) -> str:
        """``1/sqrt(sum_onboard x^2 / (A*C) + eps)`` per batch row, shaped to broadcast over ``x``."""
        masked = self.op("Mul", [x.name, self.mask_for(x.layout)], f"{name}/masked")
        sq = self.op("Mul", [masked, masked], f"{name}/sq")
        axes = [1, 2, 3] if x.layout == "nchw" else [1, 2]
        total = self.op("ReduceSum", [sq, self.ints(f"axes/{axes}", axes)], f"{name}/sum", keepdims=1)
        area = (
            self.m.area4
            if x.layout == "nchw"
            else self.op("Reshape", [self.m.area, self.ints("shape/n11", [0, 1, 1])], f"{name}/area")
        )
        denom = self.op("Mul", [area, self.scalar(float(x.channels))], f"{name}/ac")
        var = self.op(
            "Add", [self.op("Div", [total, denom], f"{name}/meansq"), self.scalar(eps)], f"{name}/eps"
        )
        return self.op("Reciprocal", [self.op("Sqrt", [var], f"{name}/sqrt")], f"{name}/rsqrt")

    def rms_norm_position_stat(self, x: Act, name: str, eps: float) -> str:
        axis = 1 if x.layout == "nchw" else -1
        sq = self.op("Mul", [x.name, x.name], f"{name}/sq")
        ms = self.op("ReduceMean", [sq], f"{name}/mean", axes=[axis], keepdims=1)
        var = self.op("Add", [ms, self.scalar(eps)], f"{name}/eps")
        return self.op("Reciprocal", [self.op("Sqrt", [var], f"{name}/sqrt")], f"{name}/rsqrt")

    # --- finishing --------------------------------------------------------------------------

    def make_model(
        self,
        graph_name: str,
        inputs: list[onnx.ValueInfoProto],
        outputs: list[onnx.ValueInfoProto],
        metadata: dict[str, str],
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, inputs, outputs, self.initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="katago-edge"
        )
        model.ir_version = 8  # readable by onnxruntime >= 1.14 and TensorRT 8.6+
        helper.set_model_props(model, metadata)
        return model


def rope_tables(angles: F32) -> tuple[F32, F32]:
    """cos / signed-sin tables ``[S, heads*dim]`` for pair-interleaved RoPE from ``angles[h, S, P]``.

    For pair ``p`` of head ``h`` (channels ``2p``, ``2p+1``), ``(a, b) -> (a cos - b sin, a sin + b
    cos)``; with ``x_swapped = (b, a)`` this is ``x*cos + x_swapped*sin_signed`` where
    ``sin_signed = (-sin, +sin)``. Tables are computed in float32 like KataGo (``cosf(float)``).
    """
    heads, s, pairs = angles.shape
    ang = angles.astype(np.float32)
    cos = np.repeat(np.cos(ang), 2, axis=2)  # [h, S, 2P]
    sin = np.sin(ang)
    sin_signed = np.stack([-sin, sin], axis=3).reshape(heads, s, 2 * pairs)
    to_s_hd = lambda t: np.ascontiguousarray(t.transpose(1, 0, 2).reshape(s, heads * 2 * pairs))  # noqa: E731
    return to_s_hd(cos).astype(np.float32), to_s_hd(sin_signed).astype(np.float32)


def inv_sqrt(dim: int) -> float:
    return 1.0 / math.sqrt(dim)
