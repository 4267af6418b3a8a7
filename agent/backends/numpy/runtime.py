"""Reference forward pass of a KataGo network in numpy, float32 (spec §2).

This is the judge every other runtime is compared with, so it follows KataGo's Eigen backend
step for step rather than being clever: "norm -> activation -> multiply by the board mask" after
every BN, global pooling with the ``(sqrt(A) - 14) * 0.1`` scaling, gpool max via the
``X + mask - 1`` trick, transformer attention over all buffer positions with off-board keys
masked, RoPE on buffer coordinates.

Internally tensors are NHWC (``[N, H, W, C]``), which matches the file's ``[kY][kX][ic][oc]``
kernel order and turns every 1x1 convolution and every transformer projection into one BLAS
matmul; k x k convolutions are im2col (a strided window view) + one ``tensordot``. Any buffer size
works (the board is wherever channel 0 of the input is 1), so 9x9 in a 19x19 buffer, 13x9, or a
9x9 buffer all evaluate the same way. ``evaluate`` keeps no state between calls: it is thread-safe.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.backends.base import NetInfo, NeuralNet, NNInputs, NNOutputs
from agent.errors import InferenceError, UnsupportedNetworkError
from agent.network import model as m

logger = logging.getLogger(__name__)

F32 = m.F32
_NEG = np.float32(-1e30)
_OUTPUT_FIELDS = ("policy", "policy_pass", "value", "score_value", "ownership")


_BLAS_THREAD_SETTERS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)


def set_blas_threads(threads: int) -> bool:
    """Best effort: cap the worker threads of the OpenBLAS numpy uses (process-wide).

    OpenBLAS workers spin while waiting; when other processes or threads compete for the cores
    (a search running several evaluator threads, a busy 2-core box) that made evaluations 5-20x
    slower here. This is what ``OPENBLAS_NUM_THREADS`` does at start-up, done later through the
    library's own setter (found via ``/proc/self/maps``, so Linux only). False if not possible.
    """
    try:
        with open("/proc/self/maps") as fh:
            libs = {ln.split()[-1] for ln in fh if "openblas" in ln.lower() and "/" in ln}
    except OSError:
        return False
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in _BLAS_THREAD_SETTERS:
            setter = getattr(lib, symbol, None)
            if setter is not None:
                setter(ctypes.c_int(threads))
                logger.debug("OpenBLAS threads set to %d via %s", threads, symbol)
                return True
    return False


def activate(x: F32, kind: m.Activation) -> F32:
    """KataGo's activations in float32; written so that no intermediate overflows."""
    if kind is m.Activation.IDENTITY:
        return x
    if kind is m.Activation.RELU:
        return np.maximum(x, np.float32(0))
    if kind is m.Activation.SILU:
        return x * (np.float32(0.5) + np.float32(0.5) * np.tanh(np.float32(0.5) * x))
    # Mish: x * tanh(softplus(x)), softplus as Eigen computes it
    softplus = (
        np.log1p(np.exp(np.minimum(x, np.float32(20)))) + np.maximum(x, np.float32(20)) - np.float32(20)
    )
    return x * np.tanh(softplus)


def conv(x: F32, layer: m.ConvLayer) -> F32:
    """Same-padded, stride-1 cross-correlation of NHWC ``x`` with a ``[kY,kX,inC,outC]`` kernel."""
    if layer.kernel_y == 1 and layer.kernel_x == 1:
        return x @ layer.weight[0, 0]
    py, px = (layer.kernel_y // 2) * layer.dilation_y, (layer.kernel_x // 2) * layer.dilation_x
    xp = np.pad(x, ((0, 0), (py, py), (px, px), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (2 * py + 1, 2 * px + 1), axis=(1, 2))
    win = win[..., :: layer.dilation_y, :: layer.dilation_x]  # [N, H, W, C, kY, kX]
    out = np.tensordot(win, layer.weight, axes=((4, 5, 3), (0, 1, 2)))
    return np.asarray(out, dtype=np.float32)


def bn_act(x: F32, bn: m.BatchNormLayer, act: m.ActivationLayer, mask: F32) -> F32:
    return activate(x * bn.merged_scale + bn.merged_bias, act.kind) * mask


def gpool(x: F32, mask: F32, area: F32) -> F32:
    """``[N,H,W,C]`` (already masked) -> ``[N,3C]``: mean, mean*(sqrt(A)-14)*0.1, on-board max."""
    mean = x.sum(axis=(1, 2)) / area[:, None]
    scaled = mean * ((np.sqrt(area) - np.float32(14)) * np.float32(0.1))[:, None]
    mx = (x + (mask - np.float32(1))).max(axis=(1, 2))
    return np.concatenate([mean, scaled, mx], axis=1)


def value_pool(x: F32, area: F32) -> F32:
    mean = x.sum(axis=(1, 2)) / area[:, None]
    b = np.sqrt(area) - np.float32(14)
    return np.concatenate(
        [
            mean,
            mean * (b * np.float32(0.1))[:, None],
            mean * (b * b * np.float32(0.01) - np.float32(0.1))[:, None],
        ],
        axis=1,
    )


def _rms(x: F32, norm: m.TransformerRMSNorm, mask: F32) -> F32:
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(ms + np.float32(norm.epsilon)) * norm.weight * mask


def rope_angles(
    block: m.AttentionBlock, ys: npt.NDArray[np.int64], xs: npt.NDArray[np.int64]
) -> tuple[F32, F32]:
    """Angles ``[num_heads, S, P]`` (queries) and ``[num_kv_heads, S, P]`` (keys) at buffer coords."""
    xs_f, ys_f = xs.astype(np.float32), ys.astype(np.float32)
    pairs = block.q_head_dim // 2
    if isinstance(block.rope, m.LearnableRope):
        f = block.rope.freqs  # [nkv, P, 2]
        k_ang = xs_f[None, :, None] * f[:, None, :, 0] + ys_f[None, :, None] * f[:, None, :, 1]
        q_kv = (np.arange(block.num_heads) * block.num_kv_heads) // block.num_heads
        return k_ang[q_kv], k_ang
    assert isinstance(block.rope, m.FixedRope)
    half = pairs // 2
    p = np.arange(pairs)
    expo = np.where(p < half, p, p - half).astype(np.float64)
    inv = (block.rope.theta ** (-2.0 * expo / pairs)).astype(np.float32)
    coord = np.where(p < half, ys_f[:, None], xs_f[:, None])  # [S, P]
    ang = (coord * inv[None, :]).astype(np.float32)
    return (
        np.broadcast_to(ang, (block.num_heads, *ang.shape)),
        np.broadcast_to(ang, (block.num_kv_heads, *ang.shape)),
    )


def _rotate(t: F32, ang: F32) -> F32:
    """Rotate channel pairs (2p, 2p+1) of ``t`` ``[N, heads, S, d]`` by ``ang`` ``[heads, S, d/2]``."""
    cos, sin = np.cos(ang), np.sin(ang)
    a, b = t[..., 0::2], t[..., 1::2]
    out = np.empty(t.shape, dtype=np.float32)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def _heads(t: F32, n: int, s: int, heads: int, dim: int) -> F32:
    return np.ascontiguousarray(t.reshape(n, s, heads, dim).transpose(0, 2, 1, 3))


def attention(x: F32, blk: m.AttentionBlock, mask: F32, live: npt.NDArray[np.int64]) -> F32:
    """Self-attention over the buffer positions ``live`` (those on the board in some batch row).

    Positions off every board in the batch are skipped: their queries are never read and their
    keys get probability 0 anyway, so the result equals attending over the whole buffer.
    """
    n, h, w, c = x.shape
    s = len(live)
    xs = x.reshape(n, h * w, c)[:, live]
    m2 = mask.reshape(n, h * w, 1)[:, live]
    xn = _rms(xs, blk.norm, m2)
    nh, nkv, qd, vd = blk.num_heads, blk.num_kv_heads, blk.q_head_dim, blk.v_head_dim
    q = _heads(xn @ blk.q_proj.weight, n, s, nh, qd)
    k = _heads(xn @ blk.k_proj.weight, n, s, nkv, qd)
    v = _heads(xn @ blk.v_proj.weight, n, s, nkv, vd)
    if blk.rope is not None:
        ys, xs_ = np.divmod(live, w)
        q_ang, k_ang = rope_angles(blk, ys, xs_)
        q, k = _rotate(q, q_ang), _rotate(k, k_ang)
    group = nh // nkv
    q *= np.float32(1.0 / np.sqrt(qd))
    kt = np.ascontiguousarray(k.transpose(0, 1, 3, 2))
    scores = q.reshape(n, nkv, group * s, qd) @ kt  # [N, nkv, group*S, S]
    scores += np.where(m2.reshape(n, 1, 1, s) > 0, np.float32(0), _NEG)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    o = (scores @ v).reshape(n, nh, s, vd).transpose(0, 2, 1, 3).reshape(n, s, nh * vd)
    y = (o @ blk.out_proj.weight) * m2
    out = x.reshape(n, h * w, c).copy()
    out[:, live] += y
    return out.reshape(n, h, w, c)


def ffn(x: F32, blk: m.FFNBlock, mask: F32, live: npt.NDArray[np.int64]) -> F32:
    n, h, w, c = x.shape
    xs = x.reshape(n, h * w, c)[:, live]
    m2 = mask.reshape(n, h * w, 1)[:, live]
    xn = _rms(xs, blk.norm, m2)
    hidden = activate(xn @ blk.linear1.weight, m.Activation.SILU)
    if blk.linear_gate is not None:
        hidden *= xn @ blk.linear_gate.weight
    out = x.reshape(n, h * w, c).copy()
    out[:, live] += (hidden @ blk.linear2.weight) * m2
    return out.reshape(n, h, w, c)


def run_block(x: F32, blk: m.Block, mask: F32, area: F32, live: npt.NDArray[np.int64]) -> F32:
    if isinstance(blk, m.OrdinaryBlock):
        hmid = conv(bn_act(x, blk.pre_bn, blk.pre_act, mask), blk.regular_conv)
        return x + conv(bn_act(hmid, blk.mid_bn, blk.mid_act, mask), blk.final_conv)
    if isinstance(blk, m.GPoolBlock):
        a = bn_act(x, blk.pre_bn, blk.pre_act, mask)
        r = conv(a, blk.regular_conv)
        g = bn_act(conv(a, blk.gpool_conv), blk.gpool_bn, blk.gpool_act, mask)
        r = r + (gpool(g, mask, area) @ blk.gpool_to_bias_mul.weight)[:, None, None, :]
        return x + conv(bn_act(r, blk.mid_bn, blk.mid_act, mask), blk.final_conv)
    if isinstance(blk, m.NestedBottleneckBlock):
        inner = conv(bn_act(x, blk.pre_bn, blk.pre_act, mask), blk.pre_conv)
        for sub in blk.blocks:
            inner = run_block(inner, sub, mask, area, live)
        return x + conv(bn_act(inner, blk.post_bn, blk.post_act, mask), blk.post_conv)
    if isinstance(blk, m.AttentionBlock):
        return attention(x, blk, mask, live)
    return ffn(x, blk, mask, live)


def trunk_tip(x: F32, trunk: m.Trunk, mask: F32, area: F32) -> F32:
    tip = trunk.tip_norm
    if isinstance(tip, m.BatchNormLayer):
        return bn_act(x, tip, trunk.tip_act, mask)
    if tip.spatial:
        sq = (x * x * mask).sum(axis=(1, 2, 3), dtype=np.float32)
        r = np.float32(1) / np.sqrt(sq / (area * np.float32(tip.channels)) + np.float32(tip.epsilon))
        xn = x * r[:, None, None, None]
    else:
        xn = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(tip.epsilon))
    return activate(xn * tip.gamma + tip.beta, trunk.tip_act.kind) * mask


def forward(net: m.Network, spatial: F32, global_: F32) -> NNOutputs:
    """Raw outputs for a batch; ``spatial`` ``[N,22,H,W]`` NCHW, ``global_`` ``[N,19]``."""
    x_in = np.ascontiguousarray(spatial.transpose(0, 2, 3, 1), dtype=np.float32)
    g_in = np.asarray(global_, dtype=np.float32)
    n, h, w, _ = x_in.shape
    mask = x_in[..., :1].copy()
    area = mask.sum(axis=(1, 2, 3), dtype=np.float32)
    if not (area > 0).all():
        raise InferenceError("a batch row has an empty board mask (spatial channel 0 is all zero)")
    live = np.flatnonzero(mask.reshape(n, h * w).max(axis=0) > 0)
    tr = net.trunk
    x = conv(x_in, tr.initial_conv) + (g_in @ tr.initial_matmul.weight)[:, None, None, :]
    for blk in tr.blocks:
        x = run_block(x, blk, mask, area, live)
    t = trunk_tip(x, tr, mask, area)

    ph = net.policy_head
    p1 = conv(t, ph.p1_conv)
    g1 = bn_act(conv(t, ph.g1_conv), ph.g1_bn, ph.g1_act, mask)
    gp = gpool(g1, mask, area)
    p1 = bn_act(p1 + (gp @ ph.gpool_to_bias_mul.weight)[:, None, None, :], ph.p1_bn, ph.p1_act, mask)
    policy = conv(p1, ph.p2_conv)
    pas = gp @ ph.gpool_to_pass_mul.weight
    if ph.gpool_to_pass_mul2 is not None:
        assert ph.gpool_to_pass_bias is not None and ph.pass_act is not None
        pas = activate(pas + ph.gpool_to_pass_bias.bias, ph.pass_act.kind) @ ph.gpool_to_pass_mul2.weight

    vh = net.value_head
    v1 = bn_act(conv(t, vh.v1_conv), vh.v1_bn, vh.v1_act, mask)
    v2 = activate(value_pool(v1, area) @ vh.v2_mul.weight + vh.v2_bias.bias, vh.v2_act.kind)
    value = v2 @ vh.v3_mul.weight + vh.v3_bias.bias
    score = v2 @ vh.sv3_mul.weight + vh.sv3_bias.bias
    own = conv(v1, vh.ownership_conv)
    f32 = np.float32
    return NNOutputs(
        policy=np.ascontiguousarray(policy.reshape(n, h * w, -1).transpose(0, 2, 1), dtype=f32),
        policy_pass=np.ascontiguousarray(pas, dtype=f32),
        value=np.ascontiguousarray(value, dtype=f32),
        score_value=np.ascontiguousarray(score, dtype=f32),
        ownership=np.ascontiguousarray(own.reshape(n, h * w), dtype=f32),
    )


class NumpyNet(NeuralNet):
    """The numpy reference runtime: ``NumpyNet(path_or_network)``; fp32, any batch, any buffer.

    Batches larger than ``max_chunk`` rows are evaluated chunk by chunk (the attention scores of
    b10c384 take ~19 MB per row). ``threads`` caps OpenBLAS's threads (process-wide, see
    :func:`set_blas_threads`). Other keyword options of ``load_net`` are accepted and ignored.
    """

    def __init__(
        self,
        network: m.Network | str | Path,
        *,
        max_chunk: int = 16,
        threads: int | None = None,
        **_opts: object,
    ) -> None:
        if not isinstance(network, m.Network):
            from agent.network.reader import read_network

            network = read_network(network)
        if network.trunk.metadata_encoder is not None:
            raise UnsupportedNetworkError(
                f"{network.source or network.name}: SGF-metadata (human-SL) networks are not supported"
            )
        self.network = network
        self.max_chunk = max(1, int(max_chunk))
        if threads and not set_blas_threads(int(threads)):
            logger.info(
                "numpy runtime: cannot set BLAS threads here; set OPENBLAS_NUM_THREADS=%d instead", threads
            )
        self._info = NetInfo(network.name, network.version, "numpy", "fp32")

    @property
    def info(self) -> NetInfo:
        return self._info

    @property
    def postprocess_params(self) -> m.PostProcessParams:
        """The header values shared post-processing needs (multipliers, version, policy channels)."""
        return self.network.postprocess

    def evaluate(self, inputs: NNInputs) -> NNOutputs:
        """Evaluate in chunks of at most ``max_chunk`` rows (bounds attention memory on small devices)."""
        n = inputs.batch_size
        try:
            with np.errstate(over="ignore", under="ignore"):
                parts = [
                    forward(
                        self.network,
                        inputs.spatial[i : i + self.max_chunk],
                        inputs.global_[i : i + self.max_chunk],
                    )
                    for i in range(0, n, self.max_chunk)
                ]
        except (ValueError, FloatingPointError, MemoryError) as exc:
            raise InferenceError(f"numpy evaluation of {self.network.name} failed: {exc}") from exc
        if len(parts) == 1:
            return parts[0]
        return NNOutputs(*(np.concatenate([getattr(p, f) for p in parts]) for f in _OUTPUT_FIELDS))
