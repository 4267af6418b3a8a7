"""TFLite conversion of a parsed KataGo network (workstation side, ``pip install katago-edge[convert]``).

The graph is written directly in TensorFlow from :mod:`agent.network.model` (spec §2), in NHWC
layout (what TFLite's CPU kernels and XNNPACK want), behind the same interface as every other
runtime: inputs ``spatial`` ``[N, 22, H, W]`` and ``global`` ``[N, 19]`` float32, outputs
``policy`` ``[N, Cp, H*W]``, ``policy_pass`` ``[N, Cp]``, ``value`` ``[N, 3]``, ``score_value``
``[N, S]``, ``ownership`` ``[N, H*W]`` (raw, side to move). The devices only need LiteRT
(``ai-edge-litert``) to run the result; TensorFlow is imported here alone.

Precisions:

* ``fp32``: plain conversion;
* ``fp16``: float16 weights (TFLite dequantizes them, or XNNPACK runs them in half precision);
* ``int8``: int8 weights and activations calibrated on a representative dataset of real positions,
  float32 inputs and outputs (quantize/dequantize at the edges). Ops without an int8 kernel fall
  back to float;
* ``int8-full``: full-integer model (``TFLITE_BUILTINS_INT8`` only, int8 input and output
  tensors), for integer-only accelerators. The runtime quantizes inputs and dequantizes outputs
  with the tensors' scale and zero point.

Softplus (inside Mish) is written with ``exp``/``log``/``min``/``max`` exactly as KataGo's Eigen
backend computes it, so no TensorFlow "flex" op ends up in the model.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import ConversionError, RuntimeUnavailable
from agent.fsutil import atomic_write_bytes
from agent.network import model as m

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8", "int8-full")
# Name scopes of the graph's parts; an INT8 model keeps the ops under the scopes it denylists in float.
RMS_SCOPE = "rmsnorm"
ATTENTION_SCOPE = "attention_core"
SWIGLU_SCOPE = "swiglu"
GPOOL_SCOPE = "gpool"
# Layers whose convolutions and matmuls stay float in a selective ``int8`` model (:class:`Int8Options`);
# the names are those of the ONNX INT8 layer groups where they exist (``convert --keep-float``).
INT8_FLOAT_LAYERS: tuple[str, ...] = ("initial", "policy_head", "value_head")
# Parts that always stay float: normalization statistics, attention scores/softmax/values, gating.
INT8_FLOAT_PARTS: tuple[str, ...] = ("tip", RMS_SCOPE, ATTENTION_SCOPE, SWIGLU_SCOPE, GPOOL_SCOPE)
INT8_FLOAT_SCOPES: tuple[str, ...] = INT8_FLOAT_LAYERS + INT8_FLOAT_PARTS
# Other scopes that can be kept float on request: ``block<i>`` and these.
OPTIONAL_FLOAT_SCOPES = ("bottleneck", "attention_qkv", "attention_out", "ffn_in", "ffn_out")


def import_tensorflow() -> Any:
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
    except ImportError as exc:
        raise RuntimeUnavailable(
            "TFLite conversion needs TensorFlow, which is never installed on a device: on a workstation "
            "`pip install 'katago-edge[convert]'`, convert there, and copy the .tflite file"
        ) from exc
    return tf


class _Graph:
    """Builds the forward pass with TensorFlow ops; ``x`` tensors are NHWC, mask is ``[N,H,W,1]``."""

    def __init__(self, tf: Any, net: m.Network, board_y: int, board_x: int) -> None:
        self.tf = tf
        self.net = net
        self.h = board_y
        self.w = board_x

    # -- primitives --------------------------------------------------------------------------------
    def act(self, x: Any, layer: m.ActivationLayer) -> Any:
        tf = self.tf
        kind = layer.kind
        if kind == m.Activation.IDENTITY:
            return x
        if kind == m.Activation.RELU:
            return tf.nn.relu(x)
        if kind == m.Activation.SILU:
            return x * tf.sigmoid(x)
        if kind == m.Activation.MISH:
            softplus = tf.math.log(1.0 + tf.exp(tf.minimum(x, 20.0))) + tf.maximum(x, 20.0) - 20.0
            return x * tf.tanh(softplus)
        raise ConversionError(f"{layer.name}: activation {kind!r} not supported")

    def conv(self, x: Any, layer: m.ConvLayer) -> Any:
        kernel = self.tf.constant(layer.weight)  # [kY, kX, in, out] is TF's HWIO already
        return self.tf.nn.conv2d(
            x, kernel, strides=1, padding="SAME", dilations=[layer.dilation_y, layer.dilation_x]
        )

    def bnact(self, x: Any, bn: m.BatchNormLayer, act: m.ActivationLayer, mask: Any) -> Any:
        y = x * bn.merged_scale + bn.merged_bias
        return self.act(y, act) * mask

    def matmul(self, x: Any, layer: m.MatMulLayer) -> Any:
        return self.tf.matmul(x, self.tf.constant(layer.weight))

    def gpool(self, x: Any, mask: Any, mask_sum: Any) -> Any:
        tf = self.tf
        mean = tf.reduce_sum(x, axis=[1, 2]) / mask_sum  # [N, C]
        scaled = mean * (tf.sqrt(mask_sum) - 14.0) * 0.1
        mx = tf.reduce_max(x + mask - 1.0, axis=[1, 2])
        return tf.concat([mean, scaled, mx], axis=1)

    def value_pool(self, x: Any, mask_sum: Any) -> Any:
        tf = self.tf
        mean = tf.reduce_sum(x, axis=[1, 2]) / mask_sum
        root = tf.sqrt(mask_sum) - 14.0
        return tf.concat([mean, mean * root * 0.1, mean * (root * root * 0.01 - 0.1)], axis=1)

    # -- blocks ------------------------------------------------------------------------------------
    def block(self, x: Any, b: m.Block, mask: Any, mask_sum: Any) -> Any:
        tf = self.tf
        if isinstance(b, m.OrdinaryBlock):
            h = self.conv(self.bnact(x, b.pre_bn, b.pre_act, mask), b.regular_conv)
            return x + self.conv(self.bnact(h, b.mid_bn, b.mid_act, mask), b.final_conv)
        if isinstance(b, m.GPoolBlock):
            a = self.bnact(x, b.pre_bn, b.pre_act, mask)
            r = self.conv(a, b.regular_conv)
            g = self.bnact(self.conv(a, b.gpool_conv), b.gpool_bn, b.gpool_act, mask)
            with tf.name_scope(GPOOL_SCOPE):
                r = r + self.matmul(self.gpool(g, mask, mask_sum), b.gpool_to_bias_mul)[:, None, None, :]
            return x + self.conv(self.bnact(r, b.mid_bn, b.mid_act, mask), b.final_conv)
        if isinstance(b, m.NestedBottleneckBlock):
            with tf.name_scope("bottleneck"):
                y = self.conv(self.bnact(x, b.pre_bn, b.pre_act, mask), b.pre_conv)
            for j, inner in enumerate(b.blocks):
                with tf.name_scope(f"inner{j}"):
                    y = self.block(y, inner, mask, mask_sum)
            with tf.name_scope("bottleneck"):
                return x + self.conv(self.bnact(y, b.post_bn, b.post_act, mask), b.post_conv)
        if isinstance(b, m.AttentionBlock):
            return self.attention(x, b, mask)
        if isinstance(b, m.FFNBlock):
            return self.ffn(x, b, mask)
        raise ConversionError(f"block {getattr(b, 'name', b)!r}: kind not supported")

    def rms(self, x: Any, norm: m.TransformerRMSNorm, mask: Any) -> Any:
        tf = self.tf
        with tf.name_scope(RMS_SCOPE):
            ms = tf.reduce_mean(x * x, axis=-1, keepdims=True)
            return x * tf.math.rsqrt(ms + norm.epsilon) * norm.weight * mask

    def _rope_tables(self, b: m.AttentionBlock, heads: int, kv: bool) -> tuple[np.ndarray, np.ndarray]:
        """cos/sin ``[S, heads, qd/2]`` in float32, angles from buffer coordinates (spec §2.6)."""
        qd = b.q_head_dim
        pairs = qd // 2
        grid_y, grid_x = np.meshgrid(
            np.arange(self.h, dtype=np.float32), np.arange(self.w, dtype=np.float32), indexing="ij"
        )
        xs = grid_x.reshape(-1, 1, 1)
        ys = grid_y.reshape(-1, 1, 1)
        if isinstance(b.rope, m.LearnableRope):
            freqs = b.rope.freqs  # [nkv, pairs, 2]
            idx = np.arange(heads) if kv else (np.arange(heads) * b.num_kv_heads) // b.num_heads
            f = freqs[idx]  # [heads, pairs, 2]
            angle = xs * f[None, :, :, 0] + ys * f[None, :, :, 1]
        elif isinstance(b.rope, m.FixedRope):
            half = pairs // 2
            p = np.arange(pairs)
            pp = np.where(p < half, p, p - half).astype(np.float32)
            inv = np.power(np.float32(b.rope.theta), -2.0 * pp / np.float32(pairs)).astype(np.float32)
            coord = np.where(p < half, ys, xs)  # [S, 1, pairs]
            angle = np.broadcast_to(coord * inv, (self.h * self.w, heads, pairs))
        else:
            raise ConversionError(f"{b.name}: RoPE enabled but no RoPE record")
        angle = angle.astype(np.float32)
        return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)

    def _rope_full_tables(self, b: m.AttentionBlock, heads: int, kv: bool) -> tuple[Any, Any]:
        """``cos'`` and ``sin'`` of :meth:`_rotated_proj` ``[S, heads * qd]``, as graph constants."""
        cos, sin = self._rope_tables(b, heads, kv)
        s = self.h * self.w
        cos_full = np.repeat(cos, 2, axis=-1).reshape(s, -1).astype(np.float32)
        sin_full = np.stack([-sin, sin], axis=-1).reshape(s, -1).astype(np.float32)
        return self.tf.constant(cos_full), self.tf.constant(sin_full)

    def _rotated_proj(self, xn: Any, layer: m.MatMulLayer, tables: tuple[Any, Any]) -> Any:
        """``xn @ W`` with each (even, odd) channel pair rotated: ``(a cos - b sin, a sin + b cos)``.

        Written as ``(xn @ W) * cos' + (xn @ W') * sin'`` where ``W'`` is ``W`` with the two columns of
        every pair swapped and ``sin'`` is ``(-sin, +sin)`` per pair: the same products and sums, but no
        pair split/stack of tensors with a last axis of 2, which TFLite runs slowly (RoPE that way
        took about a quarter of b10c384's FP32 time).
        """
        weight = layer.weight
        swapped = weight[:, np.arange(weight.shape[1]).reshape(-1, 2)[:, ::-1].reshape(-1)]
        cos_full, sin_full = tables
        direct = self.tf.matmul(xn, self.tf.constant(weight))
        cross = self.tf.matmul(xn, self.tf.constant(np.ascontiguousarray(swapped)))
        return direct * cos_full + cross * sin_full

    def normed_sequence(self, x: Any, norm: m.TransformerRMSNorm, mask: Any) -> tuple[Any, Any]:
        """``x`` ``[N, H, W, C]`` as a sequence ``[N, S, C]`` through the block's RMSNorm, and the
        sequence mask ``[N, S, 1]``."""
        s = self.h * self.w
        seq_mask = self.tf.reshape(mask, [-1, s, 1])
        return self.rms(self.tf.reshape(x, [-1, s, x.shape[-1]]), norm, seq_mask), seq_mask

    def attention(self, x: Any, b: m.AttentionBlock, mask: Any) -> Any:
        tf = self.tf
        s = self.h * self.w
        c = x.shape[-1]
        xn, seq_mask = self.normed_sequence(x, b.norm, mask)
        nh, nkv, qd, vd = b.num_heads, b.num_kv_heads, b.q_head_dim, b.v_head_dim
        with tf.name_scope("attention_qkv"):
            if b.use_rope:
                q_tables = self._rope_full_tables(b, nh, kv=False)
                # With as many K/V heads as query heads, K's angles are Q's.
                k_tables = q_tables if nkv == nh else self._rope_full_tables(b, nkv, kv=True)
                q = self._rotated_proj(xn, b.q_proj, q_tables)
                k = self._rotated_proj(xn, b.k_proj, k_tables)
            else:
                q = self.matmul(xn, b.q_proj)
                k = self.matmul(xn, b.k_proj)
            q = tf.reshape(q, [-1, s, nh, qd])
            k = tf.reshape(k, [-1, s, nkv, qd])
            v = tf.reshape(self.matmul(xn, b.v_proj), [-1, s, nkv, vd])
        group = nh // nkv
        if group > 1:
            k = tf.repeat(k, group, axis=2)
            v = tf.repeat(v, group, axis=2)
        with tf.name_scope(ATTENTION_SCOPE):
            q = tf.transpose(q, [0, 2, 1, 3])  # [N, nh, S, qd]
            k = tf.transpose(k, [0, 2, 1, 3])  # [N, nh, S, qd]
            v = tf.transpose(v, [0, 2, 1, 3])  # [N, nh, S, vd]
            scores = tf.matmul(q, k, transpose_b=True) * (1.0 / math.sqrt(qd))
            key_mask = tf.reshape(mask, [-1, 1, 1, s])
            scores = scores + (key_mask - 1.0) * 1e9
            probs = tf.nn.softmax(scores, axis=-1)
            o = tf.matmul(probs, v)  # [N, nh, S, vd]
            o = tf.reshape(tf.transpose(o, [0, 2, 1, 3]), [-1, s, nh * vd])
        with tf.name_scope("attention_out"):
            y = self.matmul(o, b.out_proj) * seq_mask
        return x + tf.reshape(y, [-1, self.h, self.w, c])

    def ffn(self, x: Any, b: m.FFNBlock, mask: Any) -> Any:
        tf = self.tf
        xn, seq_mask = self.normed_sequence(x, b.norm, mask)
        if b.linear_gate is None:
            raise ConversionError(f"{b.name}: non-SwiGLU FFN blocks are rejected by every KataGo backend")
        with tf.name_scope("ffn_in"):
            a = self.matmul(xn, b.linear1)
            gate = self.matmul(xn, b.linear_gate)
        with tf.name_scope(SWIGLU_SCOPE):
            hdn = a * tf.sigmoid(a) * gate
        with tf.name_scope("ffn_out"):
            y = self.matmul(hdn, b.linear2) * seq_mask
        return x + tf.reshape(y, [-1, self.h, self.w, x.shape[-1]])

    # -- whole net ---------------------------------------------------------------------------------
    def forward(self, spatial_nchw: Any, global_in: Any) -> dict[str, Any]:
        tf = self.tf
        net = self.net
        x_in = tf.transpose(spatial_nchw, [0, 2, 3, 1])  # NHWC
        mask = x_in[..., 0:1]
        mask_sum = tf.reduce_sum(mask, axis=[1, 2])  # [N, 1]
        trunk = net.trunk
        with tf.name_scope("initial"):
            x = (
                self.conv(x_in, trunk.initial_conv)
                + self.matmul(global_in, trunk.initial_matmul)[:, None, None, :]
            )
        for i, b in enumerate(trunk.blocks):
            with tf.name_scope(f"block{i}"):
                x = self.block(x, b, mask, mask_sum)
        with tf.name_scope("tip"):
            t = self.tip(x, mask, mask_sum)
        with tf.name_scope("policy_head"):
            policy, policy_pass = self.policy_head(t, mask, mask_sum)
        with tf.name_scope("value_head"):
            value, score, own = self.value_head(t, mask, mask_sum)
        s = self.h * self.w
        return {
            "policy": tf.reshape(tf.transpose(policy, [0, 3, 1, 2]), [-1, net.policy_head.out_channels, s]),
            "policy_pass": tf.identity(policy_pass),
            "value": tf.identity(value),
            "score_value": tf.identity(score),
            "ownership": tf.reshape(own, [-1, s]),
        }

    def tip(self, x: Any, mask: Any, mask_sum: Any) -> Any:
        tf = self.tf
        trunk = self.net.trunk
        if isinstance(trunk.tip_norm, m.RMSNormLayer):
            tip = trunk.tip_norm
            with tf.name_scope(RMS_SCOPE):
                if tip.spatial:
                    ss = tf.reduce_sum(x * x * mask, axis=[1, 2, 3], keepdims=True)
                    r = tf.math.rsqrt(ss / (mask_sum[:, None, None, :] * float(tip.channels)) + tip.epsilon)
                else:
                    r = tf.math.rsqrt(tf.reduce_mean(x * x, axis=-1, keepdims=True) + tip.epsilon)
                return self.act(x * r * tip.gamma + tip.beta, trunk.tip_act) * mask
        return self.bnact(x, trunk.tip_norm, trunk.tip_act, mask)

    def policy_head(self, t: Any, mask: Any, mask_sum: Any) -> tuple[Any, Any]:
        ph = self.net.policy_head
        p1 = self.conv(t, ph.p1_conv)
        g1 = self.bnact(self.conv(t, ph.g1_conv), ph.g1_bn, ph.g1_act, mask)
        gp = self.gpool(g1, mask, mask_sum)
        p1 = p1 + self.matmul(gp, ph.gpool_to_bias_mul)[:, None, None, :]
        p1 = self.bnact(p1, ph.p1_bn, ph.p1_act, mask)
        policy = self.conv(p1, ph.p2_conv)  # [N, H, W, Cp]
        if ph.gpool_to_pass_mul2 is not None:
            assert ph.gpool_to_pass_bias is not None and ph.pass_act is not None
            hp = self.act(self.matmul(gp, ph.gpool_to_pass_mul) + ph.gpool_to_pass_bias.bias, ph.pass_act)
            policy_pass = self.matmul(hp, ph.gpool_to_pass_mul2)
        else:
            policy_pass = self.matmul(gp, ph.gpool_to_pass_mul)
        return policy, policy_pass

    def value_head(self, t: Any, mask: Any, mask_sum: Any) -> tuple[Any, Any, Any]:
        vh = self.net.value_head
        v1 = self.bnact(self.conv(t, vh.v1_conv), vh.v1_bn, vh.v1_act, mask)
        vp = self.value_pool(v1, mask_sum)
        v2 = self.act(self.matmul(vp, vh.v2_mul) + vh.v2_bias.bias, vh.v2_act)
        value = self.matmul(v2, vh.v3_mul) + vh.v3_bias.bias
        score = self.matmul(v2, vh.sv3_mul) + vh.sv3_bias.bias
        own = self.conv(v1, vh.ownership_conv)
        return value, score, own


def build_concrete_function(net: m.Network, board: int = 19) -> Any:
    """A TensorFlow concrete function computing the raw outputs with a dynamic batch axis."""
    if net.meta_encoder_version:
        raise ConversionError(f"{net.name}: human-SL networks with an SGF-metadata encoder are not supported")
    tf = import_tensorflow()
    graph = _Graph(tf, net, board, board)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 22, board, board], tf.float32, name="spatial"),
            tf.TensorSpec([None, 19], tf.float32, name="global_in"),
        ]
    )
    def forward(spatial: Any, global_in: Any) -> dict[str, Any]:
        return graph.forward(spatial, global_in)

    return forward.get_concrete_function()


@dataclass(frozen=True)
class Int8Options:
    """What a selective ``int8`` model quantizes (the rest stays float32, between quantize ops).

    Only the weight-heavy ops of ``quantized_ops`` are quantized (per-channel int8 weights, int8
    activations), and not those under ``float_scopes``. Everything else -- batch norms, masks,
    residual adds, global pooling, RMSNorm statistics, attention scores, softmax and the score x
    value products, SwiGLU -- runs in float: TensorFlow's converter would otherwise give every one of
    those tensors a per-tensor int8 scale, which is what made the all-int8 models lose top-1 (0.605 on
    g170-b6c96, 0.035 on b10c384). Activation ranges are the ``percentile`` (and ``100 -
    percentile``) of each tensor over all calibration positions instead of its min/max, so a few
    outliers do not coarsen the scale.

    ``mode="dynamic"`` is TensorFlow's dynamic-range quantization instead: int8 weights of every
    large constant (heads included), activations quantized per row at run time by XNNPACK, no
    calibration, no scopes. On b10c384 it is both more accurate and faster than the static model
    (docs/conversion.md), which is why :func:`int8_options` picks it for transformer networks.
    """

    quantized_ops: tuple[str, ...] = ("CONV_2D", "FULLY_CONNECTED")
    float_scopes: tuple[str, ...] = INT8_FLOAT_SCOPES
    percentile: float = 99.9999  # 100: plain min/max
    mode: str = "static"  # or "dynamic"

    def describe(self) -> dict[str, Any]:
        """For the manifest: what the model quantizes and what it keeps in float."""
        if self.mode == "dynamic":
            return {
                "mode": "dynamic",
                "quantized": "weights of every constant with >= 1024 elements; activations per row at run time",
            }
        return {
            "mode": "static",
            "quantized_ops": list(self.quantized_ops),
            "float_scopes": list(self.float_scopes),
            "float": "every other op",
            "activation_range_percentile": self.percentile,
        }


def convert(
    net: m.Network,
    out_path: Path,
    precision: str = "fp32",
    *,
    representative: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]] | None = None,
    board: int = 19,
    int8: Int8Options | None = None,
) -> Path:
    """Convert ``net`` to a ``.tflite`` file written atomically at ``out_path``.

    ``representative`` yields ``(spatial [1,22,b,b], global [1,19])`` float32 pairs of real
    positions; required for ``int8`` and ``int8-full``. ``int8`` chooses what an ``int8`` model
    quantizes (default: ``int8_options(mode="auto", net=net)``); ``int8-full`` quantizes everything.
    """
    if precision not in PRECISIONS:
        raise ConversionError(f"TFLite precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision.startswith("int8") and representative is None:
        raise ConversionError("INT8 TFLite needs a representative dataset of positions (calibration)")
    tf = import_tensorflow()
    func = build_concrete_function(net, board)
    # Through a SavedModel so that the .tflite carries a signature with named outputs.
    module = tf.Module()
    module.forward = func
    saved = tempfile.mkdtemp(prefix="katago-edge-savedmodel-")
    try:
        tf.saved_model.save(module, saved, signatures={"serving_default": func})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["serving_default"])
        with warnings.catch_warnings():
            # TensorFlow's own calibrator still uses the deprecated tf.lite.Interpreter internally.
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            try:
                options = int8 or int8_options(mode="auto", net=net)
                if precision == "int8" and options.mode == "dynamic":
                    converter.optimizations = [tf.lite.Optimize.DEFAULT]
                    data = bytes(converter.convert())
                elif precision == "int8":
                    assert representative is not None
                    data = _selective_int8(tf, converter, representative, options)
                else:
                    data = _run_converter(tf, converter, precision, representative)
            except ConversionError:
                raise
            except Exception as exc:  # TensorFlow raises a zoo of types; report them as ours
                raise ConversionError(f"TFLite conversion of {net.name} ({precision}) failed: {exc}") from exc
    finally:
        shutil.rmtree(saved, ignore_errors=True)
    atomic_write_bytes(out_path, data)
    logger.info("wrote %s (%s, %.1f MB)", out_path, precision, len(data) / 1e6)
    return out_path


def _feeds(
    representative: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
) -> Callable[[], Iterator[dict[str, np.ndarray]]]:
    def dataset() -> Iterator[dict[str, np.ndarray]]:
        for spatial, global_in in representative():
            yield {"spatial": spatial.astype(np.float32), "global_in": global_in.astype(np.float32)}

    return dataset


def _run_converter(
    tf: Any,
    converter: Any,
    precision: str,
    representative: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]] | None,
) -> bytes:
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8-full":
        assert representative is not None
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _feeds(representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return bytes(converter.convert())


# TensorFlow's calibration pass only has to attach range records to the tensors; they are then
# replaced by the percentile ranges measured over all positions (much faster than its calibrator).
_TF_CALIBRATION_POSITIONS = 2


def _selective_int8(
    tf: Any,
    converter: Any,
    representative: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    options: Int8Options,
) -> bytes:
    """Calibrate, set percentile ranges, then quantize only what ``options`` asks (QuantizationDebugger)."""
    positions = list(representative())
    if not positions:
        raise ConversionError("INT8 TFLite needs a representative dataset of positions (calibration)")
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _feeds(lambda: positions[:_TF_CALIBRATION_POSITIONS])
    # The debugger's calibrate-only conversion, then one quantization pass with a node denylist.
    probe = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=converter.representative_dataset
    )
    calibrated = bytes(probe.calibrated_model)
    float_nodes, quantized = _plan(calibrated, options)
    ranges = activation_ranges(calibrated, positions, quantized, options.percentile)
    probe.calibrated_model = _with_ranges(calibrated, ranges)
    logger.info(
        "int8: %d tensors quantized (%s), %d ops kept float",
        len(ranges),
        ", ".join(options.quantized_ops),
        len(float_nodes),
    )
    probe.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=float_nodes)
    return bytes(probe.get_nondebug_quantized_model())


def _in_scopes(name: str, scopes: tuple[str, ...]) -> bool:
    """Whether a TFLite tensor name (``a/b/op`` paths joined by ``;`` when fused) lies under a scope
    (TensorFlow suffixes a repeated scope name with ``_1``, ``_2``...)."""
    wanted = set(scopes)
    return any(
        re.sub(r"_\d+$", "", part) in wanted for piece in name.split(";") for part in piece.split("/")[:-1]
    )


def int8_options(
    keep_float: Iterable[str] | None = None,
    percentile: float = 99.9999,
    *,
    mode: str = "static",
    net: m.Network | None = None,
) -> Int8Options:
    """Options keeping the layers ``keep_float`` (default :data:`INT8_FLOAT_LAYERS`) and the parts
    of :data:`INT8_FLOAT_PARTS` in float; layer names are ``block<i>``, ``initial``,
    ``policy_head``, ``value_head`` and those of :data:`OPTIONAL_FLOAT_SCOPES`. ``mode="auto"``:
    ``dynamic`` for a ``net`` with attention blocks (without ``keep_float``), else ``static``."""
    if mode == "auto":
        mode = "dynamic" if keep_float is None and net is not None and has_attention(net) else "static"
    if mode not in ("static", "dynamic"):
        raise ConversionError(f"TFLite INT8 mode {mode!r}: expected static, dynamic or auto")
    if mode == "dynamic":
        if keep_float is not None:
            raise ConversionError("dynamic-range TFLite INT8 cannot keep layers in float (--keep-float)")
        return Int8Options(mode="dynamic")
    layers = tuple(INT8_FLOAT_LAYERS if keep_float is None else keep_float)
    known = set(INT8_FLOAT_SCOPES) | set(OPTIONAL_FLOAT_SCOPES)
    unknown = [g for g in layers if g not in known and not re.fullmatch(r"block\d+", g)]
    if unknown:
        raise ConversionError(
            f"unknown TFLite layer groups {unknown}; known: block<i>, {', '.join(sorted(known))}"
        )
    return Int8Options(float_scopes=layers + INT8_FLOAT_PARTS, percentile=percentile)


def has_attention(net: m.Network) -> bool:
    """Whether the trunk has transformer (attention) blocks, nested ones included."""

    def walk(blocks: Iterable[m.Block]) -> bool:
        return any(
            isinstance(b, m.AttentionBlock) or (isinstance(b, m.NestedBottleneckBlock) and walk(b.blocks))
            for b in blocks
        )

    return walk(net.trunk.blocks)


def _plan(calibrated: bytes, options: Int8Options) -> tuple[list[str], set[int]]:
    """Names of the ops kept float, and the activation tensors the quantized ops read and write."""
    interp = _float_interpreter(calibrated)
    names = {d["index"]: d["name"] for d in interp.get_tensor_details()}
    float_nodes: list[str] = []
    quantized: set[int] = set()
    for op in interp._get_ops_details():  # the op list has no public accessor in LiteRT
        outs = [names[i] for i in op["outputs"]]
        if op["op_name"] in options.quantized_ops and not any(
            _in_scopes(n, options.float_scopes) for n in outs
        ):
            quantized.update(int(i) for i in op["outputs"])
            quantized.add(int(op["inputs"][0]))
        else:
            float_nodes.extend(outs)
    return float_nodes, quantized


def _float_interpreter(model: bytes, keep_tensors: bool = False) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    return Interpreter(
        model_content=model,
        experimental_preserve_all_tensors=keep_tensors,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )


class _Tail:
    """The ``keep`` largest values seen so far, pruned lazily (values below the running bound are dropped)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.pool = np.empty(0, np.float32)
        self.bound = -np.inf

    def add(self, values: np.ndarray) -> None:
        self.pool = np.concatenate([self.pool, values[values >= self.bound]])
        if self.pool.size > 4 * self.keep:
            self.pool = np.partition(self.pool, self.pool.size - self.keep)[-self.keep :]
            self.bound = float(self.pool.min())

    def value(self, rank: int) -> float:
        """The value with ``rank`` values above it (0: the maximum)."""
        ordered = np.sort(self.pool)[::-1]
        return float(ordered[min(rank, ordered.size - 1)])


def activation_ranges(
    model: bytes,
    positions: list[tuple[np.ndarray, np.ndarray]],
    tensors: set[int],
    percentile: float = 99.999,
    batch: int = 4,
) -> dict[int, tuple[float, float]]:
    """``(low, high)`` of each float tensor in ``tensors``: its ``100 - percentile`` and ``percentile``
    over every element of every position (exact), running ``model`` without delegates."""
    interp = _float_interpreter(model, keep_tensors=True)
    inputs = {d["name"]: d["index"] for d in interp.get_input_details()}
    spatial_idx = next(v for k, v in inputs.items() if "spatial" in k)
    global_idx = next(v for k, v in inputs.items() if "global" in k)
    spatial = np.concatenate([np.asarray(p[0], np.float32) for p in positions])
    global_in = np.concatenate([np.asarray(p[1], np.float32) for p in positions])
    tail = (100.0 - percentile) / 100.0
    highs: dict[int, _Tail] = {}
    lows: dict[int, _Tail] = {}
    ranks: dict[int, int] = {}
    size = 0
    for start in range(0, len(spatial), batch):
        s, g = spatial[start : start + batch], global_in[start : start + batch]
        if s.shape[0] != size:
            size = s.shape[0]
            interp.resize_tensor_input(spatial_idx, list(s.shape))
            interp.resize_tensor_input(global_idx, list(g.shape))
            interp.allocate_tensors()
        interp.set_tensor(spatial_idx, s)
        interp.set_tensor(global_idx, g)
        interp.invoke()
        for i in tensors:
            a = interp.get_tensor(i).ravel()
            if i not in ranks:
                ranks[i] = math.floor(a.size // size * len(spatial) * tail)  # values beyond the percentile
                highs[i], lows[i] = _Tail(ranks[i] + 1), _Tail(ranks[i] + 1)
            highs[i].add(a)
            lows[i].add(-a)
    return {i: (-lows[i].value(ranks[i]), highs[i].value(ranks[i])) for i in tensors}


def _with_ranges(model: bytes, ranges: dict[int, tuple[float, float]]) -> bytes:
    """The calibrated model with its range records of ``ranges`` replaced."""
    from tensorflow.lite.tools import flatbuffer_utils

    obj = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    tensors = obj.subgraphs[0].tensors
    for i, (lo, hi) in ranges.items():
        q = tensors[i].quantization
        if q is None or q.min is None:
            continue
        q.min = np.array([lo], np.float32)
        q.max = np.array([hi], np.float32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))
