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
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import ConversionError, RuntimeUnavailable
from agent.fsutil import atomic_write_bytes
from agent.network import model as m

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8", "int8-full")


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
        if isinstance(b, m.OrdinaryBlock):
            h = self.conv(self.bnact(x, b.pre_bn, b.pre_act, mask), b.regular_conv)
            return x + self.conv(self.bnact(h, b.mid_bn, b.mid_act, mask), b.final_conv)
        if isinstance(b, m.GPoolBlock):
            a = self.bnact(x, b.pre_bn, b.pre_act, mask)
            r = self.conv(a, b.regular_conv)
            g = self.bnact(self.conv(a, b.gpool_conv), b.gpool_bn, b.gpool_act, mask)
            r = r + self.matmul(self.gpool(g, mask, mask_sum), b.gpool_to_bias_mul)[:, None, None, :]
            return x + self.conv(self.bnact(r, b.mid_bn, b.mid_act, mask), b.final_conv)
        if isinstance(b, m.NestedBottleneckBlock):
            y = self.conv(self.bnact(x, b.pre_bn, b.pre_act, mask), b.pre_conv)
            for inner in b.blocks:
                y = self.block(y, inner, mask, mask_sum)
            return x + self.conv(self.bnact(y, b.post_bn, b.post_act, mask), b.post_conv)
        if isinstance(b, m.AttentionBlock):
            return self.attention(x, b, mask)
        if isinstance(b, m.FFNBlock):
            return self.ffn(x, b, mask)
        raise ConversionError(f"block {getattr(b, 'name', b)!r}: kind not supported")

    def rms(self, x: Any, norm: m.TransformerRMSNorm, mask: Any) -> Any:
        tf = self.tf
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

    def _rotate(self, t: Any, cos: np.ndarray, sin: np.ndarray) -> Any:
        tf = self.tf
        n_heads, qd = cos.shape[1], cos.shape[2] * 2
        pairs = tf.reshape(t, [-1, self.h * self.w, n_heads, qd // 2, 2])
        a, b = pairs[..., 0], pairs[..., 1]
        ra = a * cos - b * sin
        rb = a * sin + b * cos
        return tf.reshape(tf.stack([ra, rb], axis=-1), [-1, self.h * self.w, n_heads, qd])

    def attention(self, x: Any, b: m.AttentionBlock, mask: Any) -> Any:
        tf = self.tf
        s = self.h * self.w
        c = x.shape[-1]
        seq = tf.reshape(x, [-1, s, c])
        seq_mask = tf.reshape(mask, [-1, s, 1])
        xn = self.rms(seq, b.norm, seq_mask)
        nh, nkv, qd, vd = b.num_heads, b.num_kv_heads, b.q_head_dim, b.v_head_dim
        q = tf.reshape(self.matmul(xn, b.q_proj), [-1, s, nh, qd])
        k = tf.reshape(self.matmul(xn, b.k_proj), [-1, s, nkv, qd])
        v = tf.reshape(self.matmul(xn, b.v_proj), [-1, s, nkv, vd])
        if b.use_rope:
            q = self._rotate(q, *self._rope_tables(b, nh, kv=False))
            k = self._rotate(k, *self._rope_tables(b, nkv, kv=True))
        group = nh // nkv
        if group > 1:
            k = tf.repeat(k, group, axis=2)
            v = tf.repeat(v, group, axis=2)
        q = tf.transpose(q, [0, 2, 1, 3])  # [N, nh, S, qd]
        k = tf.transpose(k, [0, 2, 3, 1])  # [N, nh, qd, S]
        v = tf.transpose(v, [0, 2, 1, 3])  # [N, nh, S, vd]
        scores = tf.matmul(q, k) * (1.0 / math.sqrt(qd))
        key_mask = tf.reshape(mask, [-1, 1, 1, s])
        scores = scores + (key_mask - 1.0) * 1e9
        probs = tf.nn.softmax(scores, axis=-1)
        o = tf.matmul(probs, v)  # [N, nh, S, vd]
        o = tf.reshape(tf.transpose(o, [0, 2, 1, 3]), [-1, s, nh * vd])
        y = self.matmul(o, b.out_proj) * seq_mask
        return x + tf.reshape(y, [-1, self.h, self.w, c])

    def ffn(self, x: Any, b: m.FFNBlock, mask: Any) -> Any:
        tf = self.tf
        s = self.h * self.w
        c = x.shape[-1]
        seq = tf.reshape(x, [-1, s, c])
        seq_mask = tf.reshape(mask, [-1, s, 1])
        xn = self.rms(seq, b.norm, seq_mask)
        a = self.matmul(xn, b.linear1)
        if b.linear_gate is None:
            raise ConversionError(f"{b.name}: non-SwiGLU FFN blocks are rejected by every KataGo backend")
        hdn = a * tf.sigmoid(a) * self.matmul(xn, b.linear_gate)
        y = self.matmul(hdn, b.linear2) * seq_mask
        return x + tf.reshape(y, [-1, self.h, self.w, c])

    # -- whole net ---------------------------------------------------------------------------------
    def forward(self, spatial_nchw: Any, global_in: Any) -> dict[str, Any]:
        tf = self.tf
        net = self.net
        x_in = tf.transpose(spatial_nchw, [0, 2, 3, 1])  # NHWC
        mask = x_in[..., 0:1]
        mask_sum = tf.reduce_sum(mask, axis=[1, 2])  # [N, 1]
        trunk = net.trunk
        x = (
            self.conv(x_in, trunk.initial_conv)
            + self.matmul(global_in, trunk.initial_matmul)[:, None, None, :]
        )
        for b in trunk.blocks:
            x = self.block(x, b, mask, mask_sum)
        if isinstance(trunk.tip_norm, m.RMSNormLayer):
            tip = trunk.tip_norm
            if tip.spatial:
                ss = tf.reduce_sum(x * x * mask, axis=[1, 2, 3], keepdims=True)
                r = tf.math.rsqrt(ss / (mask_sum[:, None, None, :] * float(tip.channels)) + tip.epsilon)
            else:
                r = tf.math.rsqrt(tf.reduce_mean(x * x, axis=-1, keepdims=True) + tip.epsilon)
            t = self.act(x * r * tip.gamma + tip.beta, trunk.tip_act) * mask
        else:
            t = self.bnact(x, trunk.tip_norm, trunk.tip_act, mask)

        ph = net.policy_head
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

        vh = net.value_head
        v1 = self.bnact(self.conv(t, vh.v1_conv), vh.v1_bn, vh.v1_act, mask)
        vp = self.value_pool(v1, mask_sum)
        v2 = self.act(self.matmul(vp, vh.v2_mul) + vh.v2_bias.bias, vh.v2_act)
        value = self.matmul(v2, vh.v3_mul) + vh.v3_bias.bias
        score = self.matmul(v2, vh.sv3_mul) + vh.sv3_bias.bias
        own = self.conv(v1, vh.ownership_conv)
        s = self.h * self.w
        return {
            "policy": tf.reshape(tf.transpose(policy, [0, 3, 1, 2]), [-1, ph.out_channels, s]),
            "policy_pass": tf.identity(policy_pass),
            "value": tf.identity(value),
            "score_value": tf.identity(score),
            "ownership": tf.reshape(own, [-1, s]),
        }


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


def convert(
    net: m.Network,
    out_path: Path,
    precision: str = "fp32",
    *,
    representative: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]] | None = None,
    board: int = 19,
    float_ops: tuple[str, ...] = (),
) -> Path:
    """Convert ``net`` to a ``.tflite`` file written atomically at ``out_path``.

    ``representative`` yields ``(spatial [1,22,b,b], global [1,19])`` float32 pairs of real
    positions; required for ``int8`` and ``int8-full``. ``float_ops`` names TFLite op types kept
    in float in an ``int8`` model (e.g. ``("FULLY_CONNECTED",)`` keeps the global-pooling biases and
    the value/pass heads in float; on g170-b6c96 that took the win-rate p99 error from 0.097 to
    0.065 against the fp32 reference, calibrated on 49 real positions).
    """
    if precision not in PRECISIONS:
        raise ConversionError(f"TFLite precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    tf = import_tensorflow()
    func = build_concrete_function(net, board)
    # Through a SavedModel so that the .tflite carries a signature with named outputs.
    module = tf.Module()
    module.forward = func
    saved = tempfile.mkdtemp(prefix="katago-edge-savedmodel-")
    try:
        tf.saved_model.save(module, saved, signatures={"serving_default": func})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["serving_default"])
        data = _run_converter(tf, converter, net, precision, representative, float_ops)
    finally:
        shutil.rmtree(saved, ignore_errors=True)
    atomic_write_bytes(out_path, data)
    logger.info("wrote %s (%s, %.1f MB)", out_path, precision, len(data) / 1e6)
    return out_path


def _run_converter(
    tf: Any,
    converter: Any,
    net: m.Network,
    precision: str,
    representative: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]] | None,
    float_ops: tuple[str, ...] = (),
) -> bytes:
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision.startswith("int8"):
        if representative is None:
            raise ConversionError("INT8 TFLite needs a representative dataset of positions (calibration)")
        rep = representative

        def dataset() -> Iterator[dict[str, np.ndarray]]:
            for spatial, global_in in rep():
                yield {"spatial": spatial.astype(np.float32), "global_in": global_in.astype(np.float32)}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        if precision == "int8-full":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    try:
        with warnings.catch_warnings():
            # TensorFlow's own calibrator still uses the deprecated tf.lite.Interpreter internally.
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            if float_ops and precision == "int8" and converter.representative_dataset is not None:
                options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(float_ops))
                debugger = tf.lite.experimental.QuantizationDebugger(
                    converter=converter, debug_dataset=converter.representative_dataset, debug_options=options
                )
                return bytes(debugger.get_nondebug_quantized_model())
            return bytes(converter.convert())
    except Exception as exc:  # TensorFlow raises a zoo of types; report them as ours
        raise ConversionError(f"TFLite conversion of {net.name} ({precision}) failed: {exc}") from exc
