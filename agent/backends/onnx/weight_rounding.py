"""Data-calibrated rounding of INT8 weights (GPTQ) for the static INT8 ONNX graphs.

Round-to-nearest puts every weight on its closest grid point independently; the errors of one
output channel then add up in its pre-activation. GPTQ (Frantar et al., 2023, after Optimal
Brain Quantization) rounds the columns of a layer's weight matrix one at a time and spreads each
column's rounding error over the columns not yet rounded, weighted by the inverse of the layer's
input second-moment matrix ``H = X^T X`` (``X``: one row per output position, the im2col patch
of a convolution or the input row of a MatMul, from calibration positions). This minimises
``|X W_q^T - X W^T|^2`` far better than rounding each weight alone.

The grid is unchanged: per output channel, symmetric, ``scale = max|w| / 127`` (what
onnxruntime's quantizer computes from the float weights), so :func:`apply_rounding` only
replaces the INT8 values of the quantized graph's weight initializers; scales, zero points and
the INT32 bias scales stay onnxruntime's. Columns are processed in descending order of
``diag(H)`` ("act-order") with a damping of 1 % of the mean diagonal, in float64.

``bias correction`` (optional): the remaining mean output shift ``(W_q - W) E[x]`` per channel
is subtracted from the layer's float bias before quantization.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from agent.errors import ConversionError
from agent.network.tensors import PositionSet

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
ROUNDINGS = ("nearest", "gptq")
QMAX = 127


@dataclass
class LayerStats:
    """Calibration statistics of one Conv/MatMul's input, in the layer's column order."""

    hessian: F64  # sum over rows of x x^T
    mean: F64  # mean input row
    rows: int


def weight_matrix(node: onnx.NodeProto, w: npt.NDArray[np.floating]) -> F64:
    """``[out, in]`` matrix of a Conv (``[O, C, kh, kw]`` -> ``[O, C*kh*kw]``) or MatMul (``W^T``)."""
    if node.op_type == "Conv":
        return w.reshape(w.shape[0], -1).astype(np.float64)
    return w.T.astype(np.float64)


def from_matrix(node: onnx.NodeProto, m: F64, shape: tuple[int, ...]) -> F64:
    return m.reshape(shape) if node.op_type == "Conv" else m.T


def channel_scales(m: F64) -> F64:
    """Per-output-channel symmetric scales ``max|w| / 127``; like onnxruntime, scale 1 for the
    (all but) zero rows whose scale would be below the smallest normal float32."""
    scale = np.abs(m).max(axis=1) / QMAX
    return np.where(scale >= float(np.finfo(np.float32).tiny), scale, 1.0)


def round_nearest(m: F64, scale: F64) -> F64:
    """Integer grid values of round-to-nearest (``[out, in]``)."""
    return np.clip(np.round(m / scale[:, None]), -QMAX, QMAX)


def gptq(m: F64, scale: F64, hessian: F64, damping: float = 0.01, block: int = 128) -> F64:
    """Integer grid values chosen by GPTQ for ``m`` (``[out, in]``) given ``H = X^T X`` (``[in, in]``)."""
    w = m.copy()
    h = hessian.copy()
    # inputs never non-zero on the calibration positions: rounded to nearest, no error feedback
    # (zeroing them, as GPTQ does, would break positions where they do fire)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    order = np.argsort(-np.diag(h), kind="stable")
    inverse = np.argsort(order)
    w = w[:, order]
    h = h[np.ix_(order, order)]
    h[np.diag_indices_from(h)] += damping * float(np.mean(np.diag(h)))
    # upper Cholesky factor of H^-1: row i holds the error-propagation weights of column i
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T
    q = np.zeros_like(w)
    s = scale[:, None]
    cols = w.shape[1]
    for b0 in range(0, cols, block):
        b1 = min(b0 + block, cols)
        wb = w[:, b0:b1].copy()
        errs = np.zeros_like(wb)
        hb = hinv[b0:b1, b0:b1]
        for j in range(b1 - b0):
            col = wb[:, j]
            qj = np.clip(np.round(col / s[:, 0]), -QMAX, QMAX)
            q[:, b0 + j] = qj
            err = (col - qj * s[:, 0]) / hb[j, j]
            wb[:, j:] -= np.outer(err, hb[j, j:])
            errs[:, j] = err
        w[:, b1:] -= errs @ hinv[b0:b1, b1:]
    return q[:, inverse]


def quantized_layers(model: onnx.ModelProto, exclude: Sequence[str]) -> list[onnx.NodeProto]:
    """Conv/MatMul nodes with constant weights that the static INT8 pass quantizes."""
    consts = {i.name for i in model.graph.initializer}
    skip = set(exclude)
    return [
        n
        for n in model.graph.node
        if n.op_type in ("Conv", "MatMul") and n.input[1] in consts and n.name not in skip
    ]


def _im2col(x: npt.NDArray[np.float32], kshape: tuple[int, ...]) -> F64:
    """Rows ``[N*H*W, C*kh*kw]`` of a stride-1 'same' convolution's input patches."""
    kh, kw = kshape[2], kshape[3]
    if kh == 1 and kw == 1:
        return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1]).astype(np.float64)
    ph, pw = kh // 2, kw // 2
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))  # N,C,H,W,kh,kw
    return (
        np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5))
        .reshape(-1, x.shape[1] * kh * kw)
        .astype(np.float64)
    )


def collect_stats(
    model: onnx.ModelProto,
    layers: Sequence[onnx.NodeProto],
    positions: PositionSet,
    batch: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, LayerStats]:
    """``H = X^T X`` and the mean input row of each layer over the on-board rows of ``positions``.

    Each run of ``batch`` positions returns the inputs of every layer at once, and they dominate
    the memory: b10c384 peaked ~1 GB above the graph with batches of 8 positions, ~0.26 GB with
    one (and ran faster), while its statistics take 77 MB (float64). The sums do not depend on
    ``batch`` beyond float64 rounding."""
    import onnxruntime as ort

    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in probe.graph.output}
    inputs = sorted({n.input[0] for n in layers})
    for t in inputs:
        if t not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    # layers reading the same tensor with the same kernel (Q/K/V, SwiGLU pairs) share their statistics
    keys = {
        n.name: (n.input[0], n.op_type, shapes[n.input[1]][2:] if n.op_type == "Conv" else ()) for n in layers
    }
    first: dict[tuple[str, str, tuple[int, ...]], onnx.NodeProto] = {}
    for n in layers:
        first.setdefault(keys[n.name], n)
    shared: dict[tuple[str, str, tuple[int, ...]], LayerStats] = {}
    total = len(positions)
    for i, b in enumerate(positions.batches(batch)):
        outs = dict(zip(inputs, sess.run(inputs, {"spatial": b.spatial, "global": b.global_}), strict=True))
        onboard = b.spatial[:, 0].reshape(-1) > 0.5
        for key, n in first.items():
            x = outs[n.input[0]]
            if n.op_type == "Conv":
                rows = _im2col(x, shapes[n.input[1]])
                if rows.shape[0] == onboard.shape[0]:
                    rows = rows[onboard]
            else:
                rows = x.reshape(-1, x.shape[-1]).astype(np.float64)
                if x.ndim == 3 and rows.shape[0] == onboard.shape[0]:
                    rows = rows[onboard]
            st = shared.get(key)
            if st is None:
                k = rows.shape[1]
                st = shared[key] = LayerStats(np.zeros((k, k)), np.zeros(k), 0)
            st.hessian += rows.T @ rows
            st.mean += rows.sum(axis=0)
            st.rows += rows.shape[0]
        if progress:
            progress(min((i + 1) * batch, total), total)
    stats = {n.name: shared[keys[n.name]] for n in layers}
    for st in shared.values():
        st.mean /= max(st.rows, 1)
    return stats


def rounded_weights(
    model: onnx.ModelProto,
    layers: Sequence[onnx.NodeProto],
    stats: dict[str, LayerStats],
    method: str = "gptq",
    damping: float = 0.01,
) -> dict[str, F64]:
    """``weight initializer name -> integer grid values`` (float64, the float weight's shape)."""
    if method not in ROUNDINGS:
        raise ConversionError(f"unknown weight rounding {method!r}; expected one of {list(ROUNDINGS)}")
    inits = {i.name: i for i in model.graph.initializer}
    result: dict[str, F64] = {}
    for n in layers:
        w = numpy_helper.to_array(inits[n.input[1]])
        m = weight_matrix(n, w)
        scale = channel_scales(m)
        if method == "gptq":
            q = gptq(m, scale, stats[n.name].hessian, damping=damping)
        else:
            q = round_nearest(m, scale)
        result[n.input[1]] = from_matrix(n, q, w.shape)
    return result


def output_error(m: F64, q: F64, scale: F64, st: LayerStats) -> float:
    """``E|x (W_q - W)^T|^2`` per row from the calibration statistics (``trace(D H D^T) / rows``)."""
    d = q * scale[:, None] - m
    return float(np.einsum("ij,jk,ik->", d, st.hessian, d) / max(st.rows, 1))


def bias_corrections(
    model: onnx.ModelProto,
    layers: Sequence[onnx.NodeProto],
    stats: dict[str, LayerStats],
    grid: dict[str, F64],
) -> dict[str, F64]:
    """``bias initializer name -> corrected bias`` removing the mean output shift of rounding."""
    inits = {i.name: i for i in model.graph.initializer}
    result: dict[str, F64] = {}
    for n in layers:
        if n.op_type != "Conv" or len(n.input) < 3 or n.input[2] not in inits:
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        m = weight_matrix(n, w)
        scale = channel_scales(m)
        q = weight_matrix(n, grid[n.input[1]])
        shift = (q * scale[:, None] - m) @ stats[n.name].mean
        bias = numpy_helper.to_array(inits[n.input[2]]).astype(np.float64)
        result[n.input[2]] = bias - shift
    return result


def replace_initializers(model: onnx.ModelProto, values: dict[str, F64]) -> onnx.ModelProto:
    """Copy of ``model`` with the float initializers in ``values`` replaced (same dtype float32)."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    for init in out.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(values[init.name].astype(np.float32), init.name))
    return out


def apply_rounding(quant: onnx.ModelProto, float_model: onnx.ModelProto, grid: dict[str, F64]) -> int:
    """Write ``grid`` into the INT8 weight initializers of a QDQ graph in place; returns the count.

    The QDQ graph stores weight ``W`` as ``W_quantized`` (int8) + ``W_scale`` feeding a
    ``DequantizeLinear``. Its scales must be the ``max|w| / 127`` of ``float_model`` the grid was
    computed on (checked), so the INT32 bias scales (input scale x weight scale) stay valid.
    """
    inits = {i.name: i for i in quant.graph.initializer}
    floats = {i.name: i for i in float_model.graph.initializer}
    consumers = {n.input[1]: n for n in float_model.graph.node if n.op_type in ("Conv", "MatMul")}
    done = 0
    for name, q in grid.items():
        target, scale_init = inits.get(f"{name}_quantized"), inits.get(f"{name}_scale")
        if target is None or scale_init is None:
            continue
        old = numpy_helper.to_array(target)
        if old.shape != q.shape:
            raise ConversionError(f"{name}: quantized shape {old.shape} differs from the rounding {q.shape}")
        ours = channel_scales(weight_matrix(consumers[name], numpy_helper.to_array(floats[name])))
        theirs = numpy_helper.to_array(scale_init).astype(np.float64).reshape(-1)
        if theirs.shape != ours.shape or not np.allclose(theirs, ours, rtol=1e-5, atol=0.0):
            raise ConversionError(f"{name}: the quantizer's weight scales differ from max|w|/127")
        target.CopyFrom(numpy_helper.from_array(np.clip(q, -QMAX, QMAX).astype(np.int8), target.name))
        done += 1
    return done
