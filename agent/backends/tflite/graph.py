"""The forward pass of a KataGo network as TFLite builtin operators (used by :mod:`.writer`).

:class:`Graph` emits, into a :class:`~agent.backends.tflite.flatbuf.ModelBuilder`, the computation
of :mod:`agent.backends.numpy.runtime` (spec §2) in NHWC, with the rewrites listed in the writer's
docstring (batch norms folded into convolutions, RMSNorm weights and the attention scale folded
into projections, RoPE without a pair split, grouped-query attention without repeated keys,
per-batch pooling factors once). With an :class:`~agent.backends.tflite.int8.Int8Plan`, the trunk's
convolutions and projections are recorded as INT8 sites (first pass) or written in int8 (second),
unit by unit: a trunk block is unit ``block<i>``, and inside a nested bottleneck block its two
convolutions (``block<i>.bottleneck``) and each kind of inner block (``block<i>.attention``,
``block<i>.ffn``, ``block<i>.conv``) are units of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from agent.backends.tflite import int8
from agent.backends.tflite.flatbuf import BATCH, Quant, Tensor
from agent.backends.tflite.ops import Act, BuiltinOp, Ops
from agent.errors import ConversionError
from agent.network import model as m

OUTPUT_NAMES = ("policy", "policy_pass", "value", "score_value", "ownership")
# INT8 units inside a nested bottleneck block: ``block<i>.bottleneck`` (its two convolutions) and
# one per kind of inner block (b10c384: ``block<i>.attention``, ``block<i>.ffn``)
_PART: dict[type, str] = {m.AttentionBlock: "attention", m.FFNBlock: "ffn"}
_F32 = np.float32


@dataclass(frozen=True)
class Linear:
    """A convolution (``dilation`` given, OHWI ``weight``, stride 1, same padding) or a
    fully-connected layer (``dilation`` None, ``[out, in]`` ``weight``), with its fused activation."""

    name: str
    weight: np.ndarray
    bias: np.ndarray | None
    act: int
    dilation: tuple[int, int] | None


class Graph:
    """Emits the forward pass of one network; tensors are NHWC ``[N, H, W, C]``."""

    def __init__(
        self, net: m.Network, ops: Ops, board_y: int, board_x: int, plan: int8.Int8Plan | None = None
    ) -> None:
        self.net = net
        self.ops = ops
        self.plan = plan
        self.unit: str | None = None  # the INT8 unit being emitted (None outside the trunk)
        self.half_tables = plan is not None or ops.weights == "fp16"
        self.h, self.w = board_y, board_x
        self.s = board_y * board_x
        self.spatial = ops.mb.activation("spatial", (BATCH, 22, board_y, board_x))
        self.global_in = ops.mb.activation("global_in", (BATCH, 19))
        self.x_in = ops.transpose(self.spatial, (0, 2, 3, 1))
        self.mask = ops.channel_slice(self.x_in, 0, 1)  # [N, H, W, 1]
        self.area = ops.reduce(BuiltinOp.SUM, self.mask, (1, 2))  # [N, 1]

    # -- per-batch constants, built on first use -----------------------------------------------------
    @cached_property
    def inv_area(self) -> Tensor:
        return self.ops.binary(BuiltinOp.DIV, self.ops.scalar(1.0), self.area)

    @cached_property
    def root(self) -> Tensor:
        """``sqrt(area) - 14``, KataGo's board-size term."""
        return self.ops.sub(self.ops.unary(BuiltinOp.SQRT, self.area), self.ops.scalar(14.0))

    @cached_property
    def scaled_factor(self) -> Tensor:
        return self.ops.mul(self.inv_area, self.ops.mul(self.root, self.ops.scalar(0.1)))

    @cached_property
    def quadratic_factor(self) -> Tensor:
        sq = self.ops.mul(self.ops.mul(self.root, self.root), self.ops.scalar(0.01))
        return self.ops.mul(self.inv_area, self.ops.sub(sq, self.ops.scalar(0.1)))

    @cached_property
    def mask_minus_one(self) -> Tensor:
        return self.ops.sub(self.mask, self.ops.scalar(1.0))

    @cached_property
    def seq_mask(self) -> Tensor:
        return self.ops.reshape(self.mask, (BATCH, self.s, 1))

    @cached_property
    def key_bias(self) -> Tensor:
        """0 for keys on the board, -1e9 off it, ``[N, 1, 1, S]``."""
        big = self.ops.mul(self.mask_minus_one, self.ops.scalar(1e9))
        return self.ops.reshape(big, (BATCH, 1, 1, self.s))

    # -- primitives ---------------------------------------------------------------------------------
    def activation(self, y: Tensor, kind: m.Activation) -> Tensor:
        ops = self.ops
        if kind in (m.Activation.IDENTITY,):
            return y
        if kind is m.Activation.RELU:
            return ops.unary(BuiltinOp.RELU, y)
        if kind is m.Activation.SILU:
            return ops.mul(y, ops.unary(BuiltinOp.LOGISTIC, y))
        if kind is m.Activation.MISH:
            e = ops.unary(BuiltinOp.EXP, ops.binary(BuiltinOp.MINIMUM, y, ops.scalar(20.0)))
            n = ops.mul(e, ops.add(e, ops.scalar(2.0)))
            return ops.mul(y, ops.binary(BuiltinOp.DIV, n, ops.add(n, ops.scalar(2.0))))
        raise ConversionError(f"activation {kind!r} not supported")

    def act_mask(self, y: Tensor, kind: m.Activation, relu_fused: bool) -> Tensor:
        if not (relu_fused and kind is m.Activation.RELU):
            y = self.activation(y, kind)
        return self.ops.mul(y, self.mask)

    def bn_act(self, x: Tensor, bn: m.BatchNormLayer, act: m.ActivationLayer) -> Tensor:
        """``act(x * scale + bias) * mask`` (ReLU fused into the add)."""
        ops = self.ops
        scale = bn.merged_scale
        if not np.all(scale == 1):
            x = ops.mul(x, ops.const(bn.name + "/scale", scale))
        y = ops.add(x, ops.const(bn.name + "/bias", bn.merged_bias), fused_relu(act.kind))
        return self.act_mask(y, act.kind, relu_fused=True)

    def conv(
        self,
        x: Tensor,
        layer: m.ConvLayer,
        scale: np.ndarray | None = None,
        bias: np.ndarray | None = None,
        act: int = Act.NONE,
    ) -> Tensor:
        w = layer.weight if scale is None else layer.weight * scale  # [kY, kX, in, out]
        ohwi = np.ascontiguousarray(w.transpose(3, 0, 1, 2), dtype=_F32)
        b = np.zeros(layer.out_channels, _F32) if bias is None else bias
        return self.linear(x, Linear(layer.name, ohwi, b, act, (layer.dilation_y, layer.dilation_x)))

    def linear(self, x: Tensor, layer: Linear, float_only: bool = False) -> Tensor:
        """``layer`` on ``x``; in the trunk (unless ``float_only``) an INT8 site: recorded in the
        float model, written in int8 unless its unit is kept float."""
        plan = self.plan if self.unit is not None and not float_only else None
        unit = self.unit or ""
        if plan is not None and plan.quantizes(unit):
            plan.sites.append(int8.Site(layer.name, unit, x.index))
            return self.int8_op(x, layer, len(plan.sites) - 1)
        out = self.emit(x, layer, self.ops.weight(layer.name, layer.weight), self.bias(layer))
        if plan is not None:
            plan.sites.append(int8.Site(layer.name, unit, x.index, out.index))
        return out

    def bias(self, layer: Linear) -> Tensor | None:
        """The float bias tensor (a convolution always has one)."""
        bias = layer.bias
        if bias is None and layer.dilation is not None:
            bias = np.zeros(layer.weight.shape[0], _F32)
        return None if bias is None else self.ops.const(layer.name + "/bias", bias)

    def emit(
        self, x: Tensor, layer: Linear, filt: Tensor, bias: Tensor | None, out_quant: Quant | None = None
    ) -> Tensor:
        """The ``CONV_2D`` or ``FULLY_CONNECTED`` op of ``layer`` (int8 with ``out_quant``; a float
        FC with an int8 filter is hybrid: its input is quantized per row at run time)."""
        if layer.dilation is not None:
            return self.ops.conv2d(
                x, filt, bias, layer.dilation, layer.act, name=layer.name, out_quant=out_quant
            )
        hybrid = out_quant is None and filt.dtype == np.int8
        return self.ops.fully_connected(
            x, filt, bias, layer.act, name=layer.name, out_quant=out_quant, hybrid=hybrid
        )

    def int8_op(self, x: Tensor, layer: Linear, index: int) -> Tensor:
        """``DEQUANTIZE(op_int8(QUANTIZE(x)))`` of ``layer`` with the ranges calibrated for site
        ``index``; in dynamic mode the int8 weight alone (float input, output and bias)."""
        assert self.plan is not None
        mb = self.ops.mb
        wq, w_quant = int8.weight_quant(layer.weight)
        filt = mb.constant(layer.name + "/int8", wq, w_quant)
        if self.plan.dynamic:
            return self.emit(x, layer, filt, self.bias(layer))
        in_range, out_range = self.plan.site_ranges(index, layer.name)
        in_q = int8.activation_quant(*in_range)
        xq = self.plan.quantized_input(x, in_q, self.ops)
        b = np.zeros(layer.weight.shape[0], _F32) if layer.bias is None else layer.bias
        bq, b_quant = int8.bias_int32(b, in_q, w_quant)
        bias_t = mb.constant(layer.name + "/bias_int32", bq, b_quant)
        yq = self.emit(xq, layer, filt, bias_t, int8.activation_quant(*out_range))
        return self.ops.dequantize(yq, name=layer.name + "/dequantize")

    def conv_bn_act(
        self, x: Tensor, layer: m.ConvLayer, bn: m.BatchNormLayer, act: m.ActivationLayer
    ) -> Tensor:
        y = self.conv(x, layer, bn.merged_scale, bn.merged_bias, fused_relu(act.kind))
        return self.act_mask(y, act.kind, relu_fused=True)

    def fc(
        self,
        x: Tensor,
        weight: np.ndarray,
        bias: np.ndarray | None = None,
        name: str = "fc",
        act: int = Act.NONE,
        float_only: bool = False,
    ) -> Tensor:
        """``x @ weight (+ bias)`` with ``weight`` ``[in, out]`` (file layout); an INT8 site in the
        trunk unless ``float_only``."""
        oi = np.ascontiguousarray(np.asarray(weight, _F32).T)
        return self.linear(x, Linear(name, oi, bias, act, None), float_only)

    def as_bias(self, v: Tensor) -> Tensor:
        """``[N, C]`` -> ``[N, 1, 1, C]`` for a broadcast add over the board."""
        return self.ops.reshape(v, (BATCH, 1, 1, v.shape[-1]))

    def gpool(self, x: Tensor) -> Tensor:
        """``[N, H, W, C]`` (masked) -> ``[N, 3C]``: mean, mean * (sqrt(A) - 14) / 10, on-board max."""
        ops = self.ops
        total = ops.reduce(BuiltinOp.SUM, x, (1, 2))
        mx = ops.reduce(BuiltinOp.REDUCE_MAX, ops.add(x, self.mask_minus_one), (1, 2))
        return ops.concat([ops.mul(total, self.inv_area), ops.mul(total, self.scaled_factor), mx], axis=1)

    def value_pool(self, x: Tensor) -> Tensor:
        ops = self.ops
        total = ops.reduce(BuiltinOp.SUM, x, (1, 2))
        parts = [ops.mul(total, f) for f in (self.inv_area, self.scaled_factor, self.quadratic_factor)]
        return ops.concat(parts, axis=1)

    # -- blocks -------------------------------------------------------------------------------------
    def block(self, x: Tensor, b: m.Block) -> Tensor:
        ops = self.ops
        if isinstance(b, m.OrdinaryBlock):
            a = self.bn_act(x, b.pre_bn, b.pre_act)
            hmid = self.conv_bn_act(a, b.regular_conv, b.mid_bn, b.mid_act)
            return ops.add(x, self.conv(hmid, b.final_conv))
        if isinstance(b, m.GPoolBlock):
            a = self.bn_act(x, b.pre_bn, b.pre_act)
            s = b.mid_bn.merged_scale
            r = self.conv(a, b.regular_conv, s, b.mid_bn.merged_bias)
            g = self.conv_bn_act(a, b.gpool_conv, b.gpool_bn, b.gpool_act)
            gb = self.fc(
                self.gpool(g), b.gpool_to_bias_mul.weight * s, name=b.gpool_to_bias_mul.name, float_only=True
            )
            r = ops.add(r, self.as_bias(gb), fused_relu(b.mid_act.kind))
            r = self.act_mask(r, b.mid_act.kind, relu_fused=True)
            return ops.add(x, self.conv(r, b.final_conv))
        if isinstance(b, m.NestedBottleneckBlock):
            outer = self.unit
            self.unit = None if outer is None else f"{outer}.bottleneck"
            inner = self.conv(self.bn_act(x, b.pre_bn, b.pre_act), b.pre_conv)
            for sub in b.blocks:
                self.unit = None if outer is None else f"{outer}.{_PART.get(type(sub), 'conv')}"
                inner = self.block(inner, sub)
            self.unit = None if outer is None else f"{outer}.bottleneck"
            out = ops.add(x, self.conv(self.bn_act(inner, b.post_bn, b.post_act), b.post_conv))
            self.unit = outer
            return out
        if isinstance(b, m.AttentionBlock):
            return self.attention(x, b)
        if isinstance(b, m.FFNBlock):
            return self.ffn(x, b)
        raise ConversionError(f"block {getattr(b, 'name', b)!r}: kind not supported")

    def rms(self, seq: Tensor, norm: m.TransformerRMSNorm) -> Tensor:
        """``seq / sqrt(mean(seq^2) + eps) * mask``; the weight is folded into the next matmuls."""
        ops = self.ops
        ms = ops.reduce(BuiltinOp.MEAN, ops.mul(seq, seq), (2,), keep_dims=True)
        r = ops.unary(BuiltinOp.RSQRT, ops.add(ms, ops.scalar(norm.epsilon)))
        return ops.mul(seq, ops.mul(r, self.seq_mask))

    def attention(self, x: Tensor, b: m.AttentionBlock) -> Tensor:
        ops = self.ops
        s, c = self.s, x.shape[-1]
        nh, nkv, qd, vd = b.num_heads, b.num_kv_heads, b.q_head_dim, b.v_head_dim
        group = nh // nkv
        xn = self.rms(ops.reshape(x, (BATCH, s, c)), b.norm)
        gamma = b.norm.weight[:, None]
        wq = gamma * b.q_proj.weight * _F32(1.0 / np.sqrt(qd))
        wk = gamma * b.k_proj.weight
        if b.use_rope:
            learnable = isinstance(b.rope, m.LearnableRope)
            q = self.rotated(xn, wq, rope_tables(b, self.h, self.w, kv=False), b.q_proj.name, learnable)
            k = self.rotated(xn, wk, rope_tables(b, self.h, self.w, kv=True), b.k_proj.name, learnable)
        else:
            q = self.fc(xn, wq, name=b.q_proj.name)
            k = self.fc(xn, wk, name=b.k_proj.name)
        v = self.fc(xn, gamma * b.v_proj.weight, name=b.v_proj.name)
        # Query heads h = kv * group + j: rows (s, j) of one [S * group, qd] matrix per KV head.
        q = ops.transpose(ops.reshape(q, (BATCH, s, nkv, group * qd)), (0, 2, 1, 3))
        q = ops.reshape(q, (BATCH, nkv, s * group, qd))
        k = ops.transpose(ops.reshape(k, (BATCH, s, nkv, qd)), (0, 2, 1, 3))
        v = ops.transpose(ops.reshape(v, (BATCH, s, nkv, vd)), (0, 2, 1, 3))
        scores = ops.add(ops.batch_matmul(q, k, adj_y=True), self.key_bias)
        o = ops.batch_matmul(ops.softmax(scores), v)  # [N, nkv, S * group, vd]
        o = ops.transpose(ops.reshape(o, (BATCH, nkv, s, group * vd)), (0, 2, 1, 3))
        y = self.fc(ops.reshape(o, (BATCH, s, nh * vd)), b.out_proj.weight, name=b.out_proj.name)
        y = ops.mul(y, self.seq_mask)
        return ops.add(x, ops.reshape(y, (BATCH, self.h, self.w, c)))

    def rotated(
        self,
        xn: Tensor,
        weight: np.ndarray,
        tables: tuple[np.ndarray, np.ndarray],
        name: str,
        learnable: bool,
    ) -> Tensor:
        """``xn @ W`` with every (even, odd) column pair rotated by the RoPE angle of its position."""
        cos, sin = tables
        swapped = weight[:, np.arange(weight.shape[1]).reshape(-1, 2)[:, ::-1].reshape(-1)]
        # Learnable RoPE tables differ per block (b7c96-gqa: 0.8 MB a block in float32): float16 in
        # fp16 and int8 models. Fixed ones are the same in every block, stored once, and stay
        # float32 (in float16 they doubled b7c96-cnorm's policy error).
        table = self.ops.half if learnable and self.half_tables else self.ops.const
        direct = self.ops.mul(self.fc(xn, weight, name=name), table(name + "/cos", cos))
        cross = self.ops.mul(self.fc(xn, swapped, name=name + "/swapped"), table(name + "/sin", sin))
        return self.ops.add(direct, cross)

    def ffn(self, x: Tensor, b: m.FFNBlock) -> Tensor:
        ops = self.ops
        if b.linear_gate is None:
            raise ConversionError(f"{b.name}: non-SwiGLU FFN blocks are rejected by every KataGo backend")
        s, c = self.s, x.shape[-1]
        xn = self.rms(ops.reshape(x, (BATCH, s, c)), b.norm)
        gamma = b.norm.weight[:, None]
        a = self.fc(xn, gamma * b.linear1.weight, name=b.linear1.name)
        gate = self.fc(xn, gamma * b.linear_gate.weight, name=b.linear_gate.name)
        hidden = ops.mul(ops.mul(a, ops.unary(BuiltinOp.LOGISTIC, a)), gate)
        y = ops.mul(self.fc(hidden, b.linear2.weight, name=b.linear2.name), self.seq_mask)
        return ops.add(x, ops.reshape(y, (BATCH, self.h, self.w, c)))

    def tip(self, x: Tensor) -> Tensor:
        ops = self.ops
        trunk = self.net.trunk
        tip = trunk.tip_norm
        if isinstance(tip, m.BatchNormLayer):
            return self.bn_act(x, tip, trunk.tip_act)
        sq = ops.mul(x, x)
        if tip.spatial:
            total = ops.reduce(BuiltinOp.SUM, ops.mul(sq, self.mask), (1, 2, 3), keep_dims=True)
            count = ops.mul(ops.reshape(self.area, (BATCH, 1, 1, 1)), ops.scalar(float(tip.channels)))
            ms = ops.binary(BuiltinOp.DIV, total, count)
        else:
            ms = ops.reduce(BuiltinOp.MEAN, sq, (3,), keep_dims=True)
        r = ops.unary(BuiltinOp.RSQRT, ops.add(ms, ops.scalar(tip.epsilon)))
        y = ops.mul(ops.mul(x, r), ops.const(tip.name + "/gamma", tip.gamma))
        y = ops.add(y, ops.const(tip.name + "/beta", tip.beta))
        return self.act_mask(y, trunk.tip_act.kind, relu_fused=False)

    # -- whole net ----------------------------------------------------------------------------------
    def build(self) -> None:
        ops, net, tr = self.ops, self.net, self.net.trunk
        glob = self.fc(self.global_in, tr.initial_matmul.weight, name=tr.initial_matmul.name)
        x = ops.add(self.conv(self.x_in, tr.initial_conv), self.as_bias(glob))
        for i, b in enumerate(tr.blocks):
            self.unit = None if self.plan is None else f"block{i}"
            x = self.block(x, b)
        self.unit = None
        t = self.tip(x)

        ph = net.policy_head
        s1 = ph.p1_bn.merged_scale
        p1 = self.conv(t, ph.p1_conv, s1, ph.p1_bn.merged_bias)
        gp = self.gpool(self.conv_bn_act(t, ph.g1_conv, ph.g1_bn, ph.g1_act))
        gb = self.fc(gp, ph.gpool_to_bias_mul.weight * s1, name=ph.gpool_to_bias_mul.name)
        p1 = ops.add(p1, self.as_bias(gb), fused_relu(ph.p1_act.kind))
        p1 = self.act_mask(p1, ph.p1_act.kind, relu_fused=True)
        policy = self.conv(p1, ph.p2_conv)  # [N, H, W, Cp]
        if ph.gpool_to_pass_mul2 is not None:
            assert ph.gpool_to_pass_bias is not None and ph.pass_act is not None
            hp = self.fc(
                gp, ph.gpool_to_pass_mul.weight, ph.gpool_to_pass_bias.bias, ph.gpool_to_pass_mul.name
            )
            pas = self.fc(self.activation(hp, ph.pass_act.kind), ph.gpool_to_pass_mul2.weight, name="pass2")
        else:
            pas = self.fc(gp, ph.gpool_to_pass_mul.weight, name=ph.gpool_to_pass_mul.name)

        vh = net.value_head
        v1 = self.conv_bn_act(t, vh.v1_conv, vh.v1_bn, vh.v1_act)
        v2 = self.fc(self.value_pool(v1), vh.v2_mul.weight, vh.v2_bias.bias, vh.v2_mul.name)
        v2 = self.activation(v2, vh.v2_act.kind)
        value = self.fc(v2, vh.v3_mul.weight, vh.v3_bias.bias, vh.v3_mul.name)
        score = self.fc(v2, vh.sv3_mul.weight, vh.sv3_bias.bias, vh.sv3_mul.name)
        own = ops.reshape(self.conv(v1, vh.ownership_conv), (BATCH, self.s), name="ownership")

        cp = ph.out_channels
        if cp > 1:
            policy = ops.transpose(policy, (0, 3, 1, 2))
        policy = ops.reshape(policy, (BATCH, cp, self.s), name="policy")
        mb = ops.mb
        mb.inputs = [("spatial", self.spatial), ("global_in", self.global_in)]
        mb.outputs = list(zip(OUTPUT_NAMES, (policy, pas, value, score, own), strict=True))


def fused_relu(kind: m.Activation) -> int:
    """The fused activation of the op before an activation ``kind``: ReLU is fused, others not."""
    return Act.RELU if kind is m.Activation.RELU else Act.NONE


def rope_tables(b: m.AttentionBlock, board_y: int, board_x: int, kv: bool) -> tuple[np.ndarray, np.ndarray]:
    """``cos'``, ``sin'`` ``[S, heads * qd]`` for :meth:`Graph.rotated` (spec §2.6): each pair's
    angle repeated for ``cos'``, ``(-sin, +sin)`` per pair for ``sin'``; buffer coordinates."""
    heads = b.num_kv_heads if kv else b.num_heads
    pairs = b.q_head_dim // 2
    gy, gx = np.meshgrid(np.arange(board_y, dtype=_F32), np.arange(board_x, dtype=_F32), indexing="ij")
    xs, ys = gx.reshape(-1, 1, 1), gy.reshape(-1, 1, 1)
    if isinstance(b.rope, m.LearnableRope):
        idx = np.arange(heads) if kv else (np.arange(heads) * b.num_kv_heads) // b.num_heads
        f = b.rope.freqs[idx]  # [heads, pairs, 2]
        angle = xs * f[None, :, :, 0] + ys * f[None, :, :, 1]
    elif isinstance(b.rope, m.FixedRope):
        half = pairs // 2
        p = np.arange(pairs)
        expo = np.where(p < half, p, p - half).astype(np.float64)
        inv = (b.rope.theta ** (-2.0 * expo / pairs)).astype(_F32)
        coord = np.where(p < half, ys, xs)  # [S, 1, pairs]
        angle = np.broadcast_to(coord * inv, (board_y * board_x, heads, pairs))
    else:
        raise ConversionError(f"{b.name}: RoPE enabled but no RoPE record")
    angle = angle.astype(_F32)
    cos, sin = np.cos(angle), np.sin(angle)
    s = board_y * board_x
    return (
        np.repeat(cos, 2, axis=-1).reshape(s, -1).astype(_F32),
        np.stack([-sin, sin], axis=-1).reshape(s, -1).astype(_F32),
    )
