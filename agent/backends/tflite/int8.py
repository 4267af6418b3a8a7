"""INT8 for the direct TFLite writer: our own calibration, no TensorFlow.

Two passes over the same graph code. The first writes the float32 model and records every
quantizable site (a trunk convolution or transformer projection: its input and output tensors);
:func:`calibrate` runs that model with LiteRT's builtin kernels on calibration positions and
measures each tensor's range. The second pass writes each site as ``QUANTIZE -> int8 op ->
DEQUANTIZE``:

* weights int8, symmetric, one scale per output channel (``max |w| / 127``), zero point 0;
* bias int32 with scale ``input_scale * weight_scale[c]``;
* activations int8 per tensor, asymmetric: the exact ``100 - percentile`` and ``percentile``
  values of the tensor over every element of every calibration position, widened to contain 0 so
  that the board mask's zeros stay exact.

``dynamic`` (the default, ``auto``, for every network since 2026-12-07) is dynamic-range
quantization instead: the same int8 weights, float bias and float activations, which the kernels
(XNNPACK's included) quantize per row at run time (``asymmetric_quantize_inputs``). It needs no
calibration, its outputs stay float (a static conv's int8 output is a second rounding), and it is
closer to FP32 on every shared network: b6c96 on 200 record positions, every block INT8, lead p99
1.07 against static's 1.49 (blocks 0, 3, 4 float: 0.58 against 1.18), at the same speed
(XNNPACK's dynamically quantized kernels); on b7c96-gqa top move 0.95 against 0.91.

What stays float (the sensitive parts, as in the TensorFlow builder's selective INT8): the initial
convolution and global matmul, the policy and value heads, global pooling and its matmuls,
normalisation statistics, masks, residual adds, attention scores and softmax, SwiGLU gating, RoPE.
An input read by several sites (``x`` of Q, K and V) is quantized once.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.backends.tflite.flatbuf import Quant, Tensor
from agent.errors import ConversionError
from agent.network.tensors import PositionSet

logger = logging.getLogger(__name__)

PERCENTILE = 99.9999
CALIBRATION_BATCH = 8

Range = tuple[float, float]


@dataclass(frozen=True)
class Site:
    """A quantizable op of the model: its name, its unit (:meth:`Graph.unit <agent.backends.tflite.graph.Graph>`:
    ``block<i>`` or ``block<i>.<part>``) and, when recorded in the float model, its input / output
    tensor indices."""

    name: str
    unit: str
    input: int
    output: int = -1


@dataclass
class Int8Plan:
    """Recording sites (``ranges`` None) or writing them with the measured ``ranges`` (one per site
    of the whole trunk, in graph order, float units included: every pass meets every site)."""

    ranges: list[tuple[Range, Range]] | None = None
    dynamic: bool = False  # int8 weights only; activations quantized per row at run time
    float_units: frozenset[str] = frozenset()  # units left in float (``block<i>`` covers its parts)
    sites: list[Site] = field(default_factory=list)  # every site met so far, in graph order
    _inputs: dict[tuple[int, float, int], Tensor] = field(default_factory=dict)

    @property
    def recording(self) -> bool:
        return self.ranges is None and not self.dynamic

    def quantizes(self, unit: str) -> bool:
        """Whether this pass writes the sites of ``unit`` in int8."""
        if self.recording:
            return False
        return unit not in self.float_units and unit.partition(".")[0] not in self.float_units

    def site_ranges(self, index: int, name: str) -> tuple[Range, Range]:
        assert self.ranges is not None
        if index >= len(self.ranges):
            raise ConversionError(f"INT8: site {name} was not calibrated (graph changed between passes)")
        return self.ranges[index]

    def quantized_input(self, x: Tensor, quant: Quant, ops: Any) -> Tensor:
        key = (x.index, float(quant.scale[0]), int(quant.zero_point[0]))
        if key not in self._inputs:
            self._inputs[key] = ops.quantize(x, quant)
        return self._inputs[key]


def units_of(sites: list[Site]) -> dict[str, int]:
    """Unit -> how many sites it has, in graph order."""
    units: dict[str, int] = {}
    for site in sites:
        units[site.unit] = units.get(site.unit, 0) + 1
    return units


def activation_quant(lo: float, hi: float) -> Quant:
    """Asymmetric int8 parameters for values in ``[lo, hi]`` (widened to contain 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    zero = int(np.clip(round(-128 - lo / scale), -128, 127))
    return Quant(np.array([scale], np.float32), np.array([zero], np.int64))


def weight_quant(w: np.ndarray) -> tuple[np.ndarray, Quant]:
    """Symmetric per-output-channel int8 of ``w`` (output channel first)."""
    flat = w.reshape(w.shape[0], -1)
    scale = np.maximum(np.abs(flat).max(axis=1), 1e-12) / 127.0
    q = np.clip(np.round(flat / scale[:, None]), -127, 127).astype(np.int8).reshape(w.shape)
    return q, Quant(scale.astype(np.float32), np.zeros(w.shape[0], np.int64), axis=0)


def bias_int32(bias: np.ndarray, in_quant: Quant, w_quant: Quant) -> tuple[np.ndarray, Quant]:
    scale = (np.float64(in_quant.scale[0]) * w_quant.scale.astype(np.float64)).astype(np.float32)
    q = np.clip(np.round(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
    return q, Quant(scale, np.zeros(len(scale), np.int64), axis=0)


class _Extremes:
    """The ``keep`` largest and ``keep`` smallest values of a tensor over all batches (exact)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.high = np.empty(0, np.float32)
        self.low = np.empty(0, np.float32)

    def add(self, values: np.ndarray) -> None:
        flat = values.ravel()
        k = min(self.keep, flat.size)
        self.high = np.concatenate([self.high, np.partition(flat, flat.size - k)[flat.size - k :]])
        self.low = np.concatenate([self.low, np.partition(flat, k - 1)[:k]])
        if self.high.size > 4 * self.keep:
            self.high = np.partition(self.high, self.high.size - self.keep)[-self.keep :]
            self.low = np.partition(self.low, self.keep - 1)[: self.keep]

    def range(self) -> Range:
        """The ``keep``-th smallest and largest values seen."""
        return float(np.sort(self.low)[self.keep - 1]), float(np.sort(self.high)[-self.keep])


def calibrate(
    model: bytes,
    sites: list[Site],
    inputs: tuple[int, int],
    positions: PositionSet,
    percentile: float = PERCENTILE,
    threads: int | None = None,
) -> list[tuple[Range, Range]]:
    """Input and output ranges of every site, running the float ``model`` on ``positions`` with
    LiteRT (XNNPACK included: every site tensor is a model output, so it is kept); ``inputs`` are
    the spatial and global tensor indices."""
    from ai_edge_litert.interpreter import Interpreter

    if len(positions) == 0:
        raise ConversionError("INT8 TFLite needs calibration positions")
    interp = Interpreter(model_content=model, num_threads=threads)
    wanted = sorted({i for s in sites for i in (s.input, s.output)})
    tail = (100.0 - percentile) / 100.0
    extremes: dict[int, _Extremes] = {}
    size = 0
    for start in range(0, len(positions), CALIBRATION_BATCH):
        spatial = np.ascontiguousarray(positions.spatial[start : start + CALIBRATION_BATCH], np.float32)
        global_ = np.ascontiguousarray(positions.global_[start : start + CALIBRATION_BATCH], np.float32)
        if spatial.shape[0] != size:
            size = spatial.shape[0]
            interp.resize_tensor_input(inputs[0], list(spatial.shape))
            interp.resize_tensor_input(inputs[1], list(global_.shape))
            interp.allocate_tensors()
        interp.set_tensor(inputs[0], spatial)
        interp.set_tensor(inputs[1], global_)
        interp.invoke()
        for i in wanted:
            values = interp.get_tensor(i)
            if i not in extremes:  # beyond the percentile: this many values of every position
                extremes[i] = _Extremes(int(values.size // size * len(positions) * tail) + 1)
            extremes[i].add(values)
    ranges = [(extremes[s.input].range(), extremes[s.output].range()) for s in sites]
    logger.info("int8: calibrated %d sites on %d positions", len(sites), len(positions))
    return ranges


# Parts the writer always keeps in float (the TensorFlow builder's scope names, accepted by
# ``keep_float``); a unit (``block<i>``, ``block<i>.<part>``) can be kept float too.
ALWAYS_FLOAT = ("initial", "policy_head", "value_head", "tip", "rmsnorm", "attention_core", "swiglu", "gpool")


def float_units(keep_float: tuple[str, ...] | None, units: dict[str, int]) -> frozenset[str]:
    """The units named in ``keep_float`` (a trunk block ``block<i>`` covers its parts); other names
    must be parts that are float anyway (:data:`ALWAYS_FLOAT`)."""
    blocks = {u.partition(".")[0] for u in units}
    chosen = set()
    for name in keep_float or ():
        if name in units or name in blocks:
            chosen.add(name)
        elif name not in ALWAYS_FLOAT:
            known = sorted(set(units) | blocks, key=_natural)
            raise ConversionError(
                f"TFLite writer: cannot keep {name!r} in float; known: {', '.join(known)}, "
                + ", ".join(ALWAYS_FLOAT)
            )
    return frozenset(chosen)


def _natural(unit: str) -> tuple[int, str]:
    match = re.match(r"block(\d+)", unit)
    return (int(match.group(1)) if match else -1, unit)
