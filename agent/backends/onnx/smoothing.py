"""SmoothQuant-style per-channel rescaling of Conv/MatMul inputs before INT8 quantization.

Per-tensor INT8 activations lose the small channels when a few channels carry outliers. KataGo
transformers have such channels in their residual stream (after the bottleneck BN + SiLU, in the
RMSNorm outputs and in the SwiGLU product). For a layer ``y = x @ W`` the graph can compute the
same function as ``(x / s) @ (s * W)`` with ``s`` per input channel; the quantizer then sees the
flatter ``x / s`` while the weights, quantized per output channel, absorb ``s`` (Xiao et al.,
"SmoothQuant", 2023). The builder inserts the ``x / s`` as one cheap ``Mul`` (option
``OnnxBuildOptions.prescale``); this module measures::

    s[c] = max|x_c| ** alpha / max|W_c| ** (1 - alpha)

with ``max|x_c|`` over the calibration positions (on-board cells only) and ``max|W_c|`` over the
weights reading input channel ``c`` (after the builder's BN folding).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from agent.network.model import F32
from agent.network.tensors import PositionSet

logger = logging.getLogger(__name__)


def activation_maxima(
    model: onnx.ModelProto, tensors: dict[str, int], positions: PositionSet, batch: int = 8
) -> dict[str, F32]:
    """Per-channel max |x| of each tensor (``name -> channel axis``) over ``positions``."""
    import onnxruntime as ort

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in probe.graph.output}
    for t in tensors:
        if t not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = list(tensors)
    result: dict[str, F32] = {}
    for b in positions.batches(batch):
        outs = sess.run(names, {"spatial": b.spatial, "global": b.global_})
        onboard = b.spatial[:, 0].reshape(b.batch_size, -1, 1)
        for name, arr in zip(names, outs, strict=True):
            axis = tensors[name] % arr.ndim
            if arr.ndim == 3 and axis == 2 and arr.shape[1] == onboard.shape[1]:
                arr = arr * onboard
            a = np.moveaxis(np.abs(arr), axis, -1).reshape(-1, arr.shape[axis]).max(axis=0)
            result[name] = np.maximum(result.get(name, a), a).astype(np.float32)
    return result


def smoothing_scales(
    model: onnx.ModelProto, positions: PositionSet, skip: Iterable[str] = (), alpha: float = 0.5
) -> dict[str, F32]:
    """``layer name -> s`` for every Conv/MatMul with constant weights not in ``skip`` (node names)."""
    consts = {i.name: i for i in model.graph.initializer}
    skipped = set(skip)
    targets = [
        n
        for n in model.graph.node
        if n.op_type in ("Conv", "MatMul") and n.input[1] in consts and n.name not in skipped
    ]
    axes = {n.input[0]: (1 if n.op_type == "Conv" else -1) for n in targets}
    maxima = activation_maxima(model, axes, positions)
    scales: dict[str, F32] = {}
    for n in targets:
        w = np.abs(numpy_helper.to_array(consts[n.input[1]]))
        w_max = w.max(axis=(0, 2, 3)) if n.op_type == "Conv" else w.max(axis=1)
        a_max = maxima[n.input[0]]
        s = np.power(np.maximum(a_max, 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1.0 - alpha)
        scales[n.name.rsplit("/", 1)[0]] = np.clip(s, 1e-2, 1e2).astype(np.float32)
    logger.info("SmoothQuant scales for %d layers (alpha %.2f)", len(scales), alpha)
    return scales
