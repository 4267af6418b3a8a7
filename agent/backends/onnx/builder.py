"""Parsed KataGo network → ``onnx.ModelProto`` (no PyTorch), same maths as spec §2.

Graph interface (dynamic batch ``N``; buffer ``H x W``, 19x19 unless built smaller)::

    inputs   spatial      float32 [N, 22, H, W]   channel 0 = on-board mask (the mask is derived
             global       float32 [N, 19]          inside the graph, not a separate input)
    outputs  policy       float32 [N, Cp, H*W]    raw logits, side to move, symmetrised frame
             policy_pass  float32 [N, Cp]
             value        float32 [N, 3]
             score_value  float32 [N, S]
             ownership    float32 [N, H*W]

Output names equal the fields of :class:`agent.backends.base.NNOutputs`. The model's metadata
properties carry the network name, model version and post-processing multipliers (key
``katago.postprocess``, JSON of :class:`PostProcessParams`), so a ``.onnx`` file is self-describing.

Choices made for onnxruntime's graph optimizer (and for later INT8/FP16 passes):

* BN scale/bias that directly follows a convolution is folded into the conv weights and a Conv
  bias, so onnxruntime fuses ``Conv+bias+ReLU``; in gpool blocks and the policy head the BN after
  "conv + pooled bias" is folded into both the conv and the pooled-bias MatMul.
* Transformer stacks run in ``[N, S, C]``; RoPE is two multiplies with precomputed cos/sin tables
  (plus a pair swap), the ``1/sqrt(qd)`` score scale is folded into ``Wq``; the softmax sees an
  additive key mask.
* Layout switches (one Transpose) happen only between conv and transformer sections.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from agent.backends.onnx.graph import F32, Act, GraphBuilder, Layout, inv_sqrt, rope_tables
from agent.errors import UnsupportedNetworkError
from agent.network.model import (
    Activation,
    AttentionBlock,
    BatchNormLayer,
    Block,
    ConvLayer,
    FFNBlock,
    FixedRope,
    GPoolBlock,
    LearnableRope,
    NestedBottleneckBlock,
    Network,
    OrdinaryBlock,
    RMSNormLayer,
    iter_blocks,
)

logger = logging.getLogger(__name__)

OUTPUT_NAMES = ("policy", "policy_pass", "value", "score_value", "ownership")
INPUT_SPATIAL = "spatial"
INPUT_GLOBAL = "global"
BUILDER_VERSION = "2"
MAX_BOARD = 19


@dataclass(frozen=True)
class OnnxBuildOptions:
    """Buffer size the graph is built for (boards up to this size run inside it, masked)."""

    board_x: int = MAX_BOARD
    board_y: int = MAX_BOARD
    #: layer name -> per-input-channel scale (SmoothQuant, :mod:`agent.backends.onnx.smoothing`)
    prescale: Mapping[str, F32] | None = None
    #: convolutions as im2col + MatMul on ``[N, S, C]`` (:mod:`agent.backends.onnx.graph`): the
    #: graph static INT8 is made from, so that quantized convs run as int8 GEMMs with float outputs
    im2col: bool = False


def build_onnx(network: Network, options: OnnxBuildOptions | None = None) -> onnx.ModelProto:
    """Build the ONNX graph of ``network``; raises ``UnsupportedNetworkError`` for what we cannot run."""
    opts = options or OnnxBuildOptions()
    if not (2 <= opts.board_x <= MAX_BOARD and 2 <= opts.board_y <= MAX_BOARD):
        raise ValueError(f"buffer size {opts.board_x}x{opts.board_y} outside 2..{MAX_BOARD}")
    if network.trunk.metadata_encoder is not None:
        raise UnsupportedNetworkError(
            f"{network.name}: SGF-metadata encoder (human-SL nets) is not supported"
        )
    b = _Builder(network, GraphBuilder(opts.board_y, opts.board_x, opts.prescale, im2col=opts.im2col))
    model = b.build()
    logger.debug("built ONNX graph for %s: %d nodes", network.name, len(model.graph.node))
    return model


def _fold(conv: ConvLayer, bn: BatchNormLayer) -> tuple[F32, F32]:
    """Conv weight and bias with ``x*merged_scale + merged_bias`` folded in (per output channel)."""
    weight = (conv.weight * bn.merged_scale).astype(np.float32)
    return weight, bn.merged_bias.astype(np.float32)


class _Builder:
    def __init__(self, net: Network, g: GraphBuilder) -> None:
        self.net = net
        self.g = g
        self.s = g.height * g.width
        #: the layout of k x k convolutions: ``Conv`` in nchw, or im2col + MatMul in nsc
        self.conv_layout: Layout = "nsc" if g.im2col else "nchw"

    # --- whole graph ------------------------------------------------------------------------

    def build(self) -> onnx.ModelProto:
        g, net = self.g, self.net
        h, w = g.height, g.width
        outputs = self.network(INPUT_SPATIAL, INPUT_GLOBAL)
        for name, tensor in zip(OUTPUT_NAMES, outputs, strict=True):
            g.nodes.append(helper.make_node("Identity", [tensor], [name], name=f"output/{name}"))
        cp, sv = net.policy_channels, net.score_channels
        inputs = [
            helper.make_tensor_value_info(
                INPUT_SPATIAL, TensorProto.FLOAT, ["N", net.num_input_channels, h, w]
            ),
            helper.make_tensor_value_info(
                INPUT_GLOBAL, TensorProto.FLOAT, ["N", net.num_input_global_channels]
            ),
        ]
        shapes: dict[str, list[str | int | None]] = {
            "policy": ["N", cp, h * w],
            "policy_pass": ["N", cp],
            "value": ["N", 3],
            "score_value": ["N", sv],
            "ownership": ["N", h * w],
        }
        outs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in shapes.items()]
        meta = {
            "katago.name": net.name,
            "katago.model_version": str(net.version),
            "katago.postprocess": json.dumps(net.postprocess.to_dict()),
            "katago.board_x": str(w),
            "katago.board_y": str(h),
            "katago.builder_version": BUILDER_VERSION,
            "katago.layer_groups": json.dumps(self.layer_groups()),
        }
        return g.make_model(net.name, inputs, outs, meta)

    def network(self, spatial: str, global_: str) -> list[str]:
        """The whole network from the inputs ``spatial`` and ``global_`` to its five outputs (in
        ``OUTPUT_NAMES`` order): the walk the ONNX graph and the Core ML program both take."""
        g, net = self.g, self.net
        g.build_masks(spatial)
        trunk = net.trunk
        x = g.conv(
            g.to_layout(Act(spatial, "nchw", net.num_input_channels), self.conv_layout),
            trunk.initial_conv.name,
            trunk.initial_conv.weight,
        )
        gb = g.matmul(global_, trunk.initial_matmul.name, trunk.initial_matmul.weight)
        x = g.add_channel_bias(x, gb, trunk.initial_matmul.name)
        x = self.blocks(x, trunk.blocks)
        x = g.to_layout(x, self.conv_layout)
        tip = self.trunk_tip(x)
        return self.policy_head(tip) + self.value_head(tip)

    def layer_groups(self) -> dict[str, list[str]]:
        """Layer names by role, stored as metadata so that FP16/INT8 passes can pick nodes by role.

        Node names are ``<layer name>/<op>`` or ``<layer name>.<part>/<op>``. Groups: ``initial``,
        ``tip``, ``policy_head``, ``value_head``, ``rmsnorm``, the transformer MatMul roles
        ``attention_qkv``, ``attention_out``, ``ffn_in``, ``ffn_out``, the nested-bottleneck 1x1 convs
        ``bottleneck``, and ``block<i>`` per trunk block.
        """
        net = self.net
        return (
            {
                "initial": [net.trunk.initial_conv.name, net.trunk.initial_matmul.name],
                "tip": [net.trunk.tip_norm.name, net.trunk.tip_act.name],
                "policy_head": _layer_names(net.policy_head),
                "value_head": _layer_names(net.value_head),
                "rmsnorm": [
                    b.norm.name
                    for b in iter_blocks(net.trunk.blocks)
                    if isinstance(b, AttentionBlock | FFNBlock)
                ],
            }
            | self.transformer_groups()
            | {f"block{i}": _layer_names(b) for i, b in enumerate(net.trunk.blocks)}
        )

    def transformer_groups(self) -> dict[str, list[str]]:
        """Transformer MatMuls by role (quantization sensitivity differs a lot between them)."""
        blocks = list(iter_blocks(self.net.trunk.blocks))
        att = [b for b in blocks if isinstance(b, AttentionBlock)]
        ffn = [b for b in blocks if isinstance(b, FFNBlock)]
        return {
            "attention_qkv": [p.name for b in att for p in (b.q_proj, b.k_proj, b.v_proj)],
            "attention_out": [b.out_proj.name for b in att],
            "ffn_in": [p.name for b in ffn if b.linear_gate is not None for p in (b.linear1, b.linear_gate)],
            "ffn_out": [b.linear2.name for b in ffn],
            "bottleneck": [
                c.name
                for b in blocks
                if isinstance(b, NestedBottleneckBlock)
                for c in (b.pre_conv, b.post_conv)
            ],
        }

    # --- blocks -----------------------------------------------------------------------------

    def preferred(self, block: Block) -> Layout | None:
        if isinstance(block, AttentionBlock | FFNBlock):
            return "nsc"
        if isinstance(block, NestedBottleneckBlock):
            if _is_1x1(block.pre_conv) and block.blocks:
                return self.preferred(block.blocks[0])
            return self.conv_layout
        convs = [block.regular_conv, block.final_conv] + (
            [block.gpool_conv] if isinstance(block, GPoolBlock) else []
        )
        return None if all(_is_1x1(c) for c in convs) else self.conv_layout

    def blocks(self, x: Act, blocks: tuple[Block, ...]) -> Act:
        for block in blocks:
            layout = self.preferred(block)
            if layout is not None:
                x = self.g.to_layout(x, layout)
            x = self.block(x, block)
        return x

    def block(self, x: Act, block: Block) -> Act:
        g = self.g
        if isinstance(block, OrdinaryBlock):
            a = g.affine_act_mask(
                x, block.pre_bn.name, block.pre_bn.merged_scale, block.pre_bn.merged_bias, block.pre_act.kind
            )
            wt, bias = _fold(block.regular_conv, block.mid_bn)
            h = g.conv(a, block.regular_conv.name, wt, bias)
            h = g.affine_act_mask(h, block.mid_bn.name, None, None, block.mid_act.kind)
            y = g.conv(h, block.final_conv.name, block.final_conv.weight)
            return g.residual_add(x, y, block.name)
        if isinstance(block, GPoolBlock):
            a = g.affine_act_mask(
                x, block.pre_bn.name, block.pre_bn.merged_scale, block.pre_bn.merged_bias, block.pre_act.kind
            )
            wt, bias = _fold(block.regular_conv, block.mid_bn)
            r = g.conv(a, block.regular_conv.name, wt, bias)
            gw, gbias = _fold(block.gpool_conv, block.gpool_bn)
            gc = g.conv(a, block.gpool_conv.name, gw, gbias)
            gc = g.affine_act_mask(gc, block.gpool_bn.name, None, None, block.gpool_act.kind)
            pooled = g.gpool(gc, f"{block.name}.gpool")
            mul = block.gpool_to_bias_mul
            vec = g.matmul(pooled, mul.name, (mul.weight * block.mid_bn.merged_scale).astype(np.float32))
            r = g.add_channel_bias(r, vec, mul.name)
            r = g.affine_act_mask(r, block.mid_bn.name, None, None, block.mid_act.kind)
            y = g.conv(r, block.final_conv.name, block.final_conv.weight)
            return g.residual_add(x, y, block.name)
        if isinstance(block, NestedBottleneckBlock):
            a = x if _is_1x1(block.pre_conv) else g.to_layout(x, self.conv_layout)
            a = g.affine_act_mask(
                a, block.pre_bn.name, block.pre_bn.merged_scale, block.pre_bn.merged_bias, block.pre_act.kind
            )
            m = g.conv(a, block.pre_conv.name, block.pre_conv.weight)
            m = self.blocks(m, block.blocks)
            if not _is_1x1(block.post_conv):
                m = g.to_layout(m, self.conv_layout)
            p = g.affine_act_mask(
                m,
                block.post_bn.name,
                block.post_bn.merged_scale,
                block.post_bn.merged_bias,
                block.post_act.kind,
            )
            y = g.conv(p, block.post_conv.name, block.post_conv.weight)
            return g.residual_add(x, y, block.name)
        if isinstance(block, AttentionBlock):
            return self.attention(g.to_layout(x, "nsc"), block)
        if isinstance(block, FFNBlock):
            return self.ffn(g.to_layout(x, "nsc"), block)
        raise UnsupportedNetworkError(
            f"block {getattr(block, 'name', '?')}: unsupported kind {type(block).__name__}"
        )

    # --- transformer ------------------------------------------------------------------------

    def rope_angles(self, block: AttentionBlock) -> tuple[F32, F32]:
        """Angles ``[heads, S, pairs]`` for the query heads and the KV heads (buffer coordinates)."""
        nh, nkv, qd = block.num_heads, block.num_kv_heads, block.q_head_dim
        pairs = qd // 2
        pos = np.arange(self.s)
        xs = (pos % self.g.width).astype(np.float32)[:, None]
        ys = (pos // self.g.width).astype(np.float32)[:, None]
        rope = block.rope
        if isinstance(rope, LearnableRope):
            f = rope.freqs.astype(np.float32)
            kv = np.stack([xs * f[k, :, 0] + ys * f[k, :, 1] for k in range(nkv)])  # [nkv,S,P]
            q = kv[[(h * nkv) // nh for h in range(nh)]]
            return q.astype(np.float32), kv.astype(np.float32)
        if isinstance(rope, FixedRope):
            half = pairs // 2
            p = np.arange(pairs)
            exps = np.where(p < half, p, p - half).astype(np.float64)
            inv = (rope.theta ** (-2.0 * exps / pairs)).astype(np.float32)
            ang = np.where(p < half, ys * inv, xs * inv).astype(np.float32)  # [S,P]
            return np.broadcast_to(ang, (nh, self.s, pairs)).copy(), np.broadcast_to(
                ang, (nkv, self.s, pairs)
            ).copy()
        raise UnsupportedNetworkError(f"{block.name}: RoPE enabled but no RoPE record")

    def attention(self, x: Act, block: AttentionBlock) -> Act:
        g, name = self.g, block.name
        nh, nkv, qd, vd = block.num_heads, block.num_kv_heads, block.q_head_dim, block.v_head_dim
        if nh % nkv != 0:
            raise UnsupportedNetworkError(f"{name}: {nh} heads not divisible by {nkv} KV heads")
        group = nh // nkv
        xn = g.rms_norm_nsc(x, block.norm.name, block.norm.epsilon, block.norm.weight)
        wq = block.q_proj.weight * np.float32(inv_sqrt(qd))
        wk, wv = block.k_proj.weight, block.v_proj.weight
        # separate projections: a fused MatMul + Split costs more in Split copies than it saves
        q = g.matmul(xn.name, block.q_proj.name, wq.astype(np.float32))
        k = g.matmul(xn.name, block.k_proj.name, wk)
        v = g.matmul(xn.name, block.v_proj.name, wv)
        if block.use_rope:
            q_ang, k_ang = self.rope_angles(block)
            q = g.rope(q, nh * qd, *rope_tables(q_ang), f"{name}.rope_q")
            k = g.rope(k, nkv * qd, *rope_tables(k_ang), f"{name}.rope_k")
        s = self.s
        q = g.op("Reshape", [q, g.ints(f"shape/nshd{nh},{qd}", [0, s, nh, qd])], f"{name}.q")
        q = g.op("Transpose", [q], f"{name}.q", perm=[0, 2, 1, 3])  # [N,nh,S,qd]
        if group > 1:
            q = g.op(
                "Reshape", [q, g.ints(f"shape/gqa{nkv},{group}", [0, nkv, group * s, qd])], f"{name}.q_gqa"
            )
        k = g.op("Reshape", [k, g.ints(f"shape/nshd{nkv},{qd}", [0, s, nkv, qd])], f"{name}.k")
        k = g.op("Transpose", [k], f"{name}.k", perm=[0, 2, 3, 1])  # [N,nkv,qd,S]
        v = g.op("Reshape", [v, g.ints(f"shape/nshd{nkv},{vd}", [0, s, nkv, vd])], f"{name}.v")
        v = g.op("Transpose", [v], f"{name}.v", perm=[0, 2, 1, 3])  # [N,nkv,S,vd]
        scores = g.op("MatMul", [q, k], f"{name}.scores")
        scores = g.op("Add", [scores, g.m.key_bias], f"{name}.scores_mask")
        probs = g.op("Softmax", [scores], f"{name}.softmax", axis=-1)
        o = g.op("MatMul", [probs, v], f"{name}.attn")  # [N,nkv,group*S,vd]
        if group > 1:
            o = g.op("Reshape", [o, g.ints(f"shape/nhsd{nh},{vd}", [0, nh, s, vd])], f"{name}.attn_heads")
        o = g.op("Transpose", [o], f"{name}.attn", perm=[0, 2, 1, 3])
        o = g.op("Reshape", [o, g.ints(f"shape/ns{nh * vd}", [0, s, nh * vd])], f"{name}.attn")
        y = g.matmul(o, block.out_proj.name, block.out_proj.weight)
        y = g.op("Mul", [y, g.m.nsc], f"{name}/mask")
        return Act(g.op("Add", [x.name, y], f"{name}/residual"), "nsc", x.channels)

    def ffn(self, x: Act, block: FFNBlock) -> Act:
        g, name = self.g, block.name
        if not block.use_swiglu or block.linear_gate is None:
            raise UnsupportedNetworkError(f"{name}: non-SwiGLU FFN blocks are rejected by KataGo too")
        xn = g.rms_norm_nsc(x, block.norm.name, block.norm.epsilon, block.norm.weight)
        a = g.matmul(xn.name, block.linear1.name, block.linear1.weight)
        gate = g.matmul(xn.name, block.linear_gate.name, block.linear_gate.weight)
        hidden = g.op("Mul", [g.activation(a, Activation.SILU, f"{name}.silu"), gate], f"{name}.swiglu")
        y = g.matmul(hidden, block.linear2.name, block.linear2.weight)
        y = g.op("Mul", [y, g.m.nsc], f"{name}/mask")
        return Act(g.op("Add", [x.name, y], f"{name}/residual"), "nsc", x.channels)

    # --- tip and heads ----------------------------------------------------------------------

    def trunk_tip(self, x: Act) -> Act:
        g, tip, act = self.g, self.net.trunk.tip_norm, self.net.trunk.tip_act
        if isinstance(tip, RMSNormLayer):
            if tip.cgroup_size != 0:
                raise UnsupportedNetworkError(f"{tip.name}: grouped RMSNorm (cgroupSize {tip.cgroup_size})")
            stat = (
                g.rms_norm_spatial_stat(x, tip.name, tip.epsilon)
                if tip.spatial
                else g.rms_norm_position_stat(x, tip.name, tip.epsilon)
            )
            x = Act(g.op("Mul", [x.name, stat], tip.name), x.layout, x.channels)
            return g.affine_act_mask(x, tip.name, tip.gamma, tip.beta, act.kind)
        return g.affine_act_mask(x, tip.name, tip.merged_scale, tip.merged_bias, act.kind)

    def policy_head(self, t: Act) -> list[str]:
        g, ph = self.g, self.net.policy_head
        w1, b1 = _fold(ph.p1_conv, ph.p1_bn)
        p1 = g.conv(t, ph.p1_conv.name, w1, b1)
        wg, bg = _fold(ph.g1_conv, ph.g1_bn)
        g1 = g.affine_act_mask(g.conv(t, ph.g1_conv.name, wg, bg), ph.g1_bn.name, None, None, ph.g1_act.kind)
        pooled = g.gpool(g1, f"{ph.name}.gpool")
        wb = (ph.gpool_to_bias_mul.weight * ph.p1_bn.merged_scale).astype(np.float32)
        p1 = g.add_channel_bias(
            p1, g.matmul(pooled, ph.gpool_to_bias_mul.name, wb), ph.gpool_to_bias_mul.name
        )
        p1 = g.affine_act_mask(p1, ph.p1_bn.name, None, None, ph.p1_act.kind)
        p2 = g.to_layout(g.conv(p1, ph.p2_conv.name, ph.p2_conv.weight), "nchw")
        policy = g.op("Reshape", [p2.name, g.ints("shape/policy", [0, ph.out_channels, self.s])], "policy")
        if ph.gpool_to_pass_mul2 is None:
            pss = g.matmul(pooled, ph.gpool_to_pass_mul.name, ph.gpool_to_pass_mul.weight)
        else:
            bias = ph.gpool_to_pass_bias.bias if ph.gpool_to_pass_bias is not None else None
            hid = g.matmul(pooled, ph.gpool_to_pass_mul.name, ph.gpool_to_pass_mul.weight, bias)
            hid = g.activation(
                hid, ph.pass_act.kind if ph.pass_act else Activation.IDENTITY, f"{ph.name}.pass_act"
            )
            pss = g.matmul(hid, ph.gpool_to_pass_mul2.name, ph.gpool_to_pass_mul2.weight)
        return [policy, pss]

    def value_head(self, t: Act) -> list[str]:
        g, vh = self.g, self.net.value_head
        w1, b1 = _fold(vh.v1_conv, vh.v1_bn)
        v1 = g.affine_act_mask(g.conv(t, vh.v1_conv.name, w1, b1), vh.v1_bn.name, None, None, vh.v1_act.kind)
        pooled = g.value_pool(v1, f"{vh.name}.vpool")
        v2 = g.matmul(pooled, vh.v2_mul.name, vh.v2_mul.weight, vh.v2_bias.bias)
        v2 = g.activation(v2, vh.v2_act.kind, vh.v2_act.name)
        value = g.matmul(v2, vh.v3_mul.name, vh.v3_mul.weight, vh.v3_bias.bias)
        score = g.matmul(v2, vh.sv3_mul.name, vh.sv3_mul.weight, vh.sv3_bias.bias)
        own = g.to_layout(g.conv(v1, vh.ownership_conv.name, vh.ownership_conv.weight), "nchw")
        ownership = g.op("Reshape", [own.name, g.ints("shape/ownership", [0, self.s])], "ownership")
        return [value, score, ownership]


def _layer_names(obj: object) -> list[str]:
    """The ``name`` of ``obj`` and of every record nested in it (dataclass fields)."""
    names = [obj.name] if hasattr(obj, "name") else []
    for fname in getattr(obj, "__dataclass_fields__", {}):
        value = getattr(obj, fname)
        for item in value if isinstance(value, tuple) else (value,):
            if hasattr(item, "__dataclass_fields__"):
                names += _layer_names(item)
    return names


def _is_1x1(conv: ConvLayer) -> bool:
    return conv.kernel_y == 1 and conv.kernel_x == 1
