"""TFLite straight from a parsed KataGo network: the flatbuffer is written here, no TensorFlow.

A device that runs LiteRT has ``ai-edge-litert`` (whose ``schema_py_generated`` is the TFLite
schema as Python) and ``flatbuffers``; that is all this module needs, so a phone or a Pi can turn a
``.bin.gz`` into a ``.tflite`` itself. The graph is the forward pass of
:mod:`agent.backends.numpy.runtime` (spec §2) in NHWC, with the same interface as the
TensorFlow-built file (:mod:`agent.backends.tflite.builder`): signature ``serving_default``,
inputs ``spatial`` ``[N, 22, H, W]`` and ``global_in`` ``[N, 19]``, outputs ``policy``
``[N, Cp, H*W]``, ``policy_pass`` ``[N, Cp]``, ``value`` ``[N, 3]``, ``score_value`` ``[N, S]``,
``ownership`` ``[N, H*W]``; the batch axis is dynamic. The graph is :mod:`.graph`, the file
format :mod:`.flatbuf` and :mod:`.ops`, INT8 (dynamic range, or static with our own calibration)
:mod:`.int8`; precisions ``fp32``, ``fp16`` (float16 weights + ``DEQUANTIZE``) and ``int8``.

Rewrites that keep the maths (what TensorFlow's converter would fold, done here once):

* a batch norm right after a convolution is folded into its filter and bias (with the global-pooling
  bias of a gpool block or the policy head scaled alike), and ReLU is fused into the op before it;
* the transformer RMSNorm weight is folded into the projections that read the normalised tensor, the
  ``1/sqrt(d)`` attention scale into the query projection; RoPE is ``(x W) * cos + (x W') * sin``
  with ``W'`` the pair-swapped columns, so no pair split;
* grouped-query attention groups the query heads that share a KV head into the rows of one matmul
  (no repeated keys or values);
* per-row pooling factors (``1/area``, ``(sqrt(area) - 14) * 0.1``...) are computed once per batch.

Mish is ``x * n / (n + 2)`` with ``n = e (e + 2)``, ``e = exp(min(x, 20))`` (= ``tanh(softplus(x))``),
so it needs no ``LOG`` kernel. The post-processing parameters ride along as the model metadata
entry ``katago_edge_postprocess`` (JSON); :func:`read_postprocess_metadata` reads them back.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TypedDict, Unpack

from agent.backends.tflite import flatbuf, int8
from agent.backends.tflite.flatbuf import ModelBuilder
from agent.backends.tflite.graph import OUTPUT_NAMES, Graph
from agent.backends.tflite.ops import Ops
from agent.errors import ConversionError
from agent.fsutil import atomic_write_bytes
from agent.network import model as m
from agent.network.tensors import PositionSet

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
METADATA_NAME = "katago_edge_postprocess"
__all__ = [
    "METADATA_NAME",
    "OUTPUT_NAMES",
    "PRECISIONS",
    "WriterOptions",
    "build_tflite",
    "calibrate_sites",
    "int8_mode_for",
    "read_postprocess_metadata",
    "site_units",
    "write_tflite",
]


class WriterOptions(TypedDict, total=False):
    """Options of :func:`build_tflite` / :func:`write_tflite` (all optional)."""

    board: int  # buffer size, 19 unless given
    calibration: PositionSet | None  # static INT8: calibration positions
    int8_mode: str  # "static", "dynamic" or "auto" (dynamic: :mod:`.int8`)
    keep_float: tuple[str, ...] | None  # INT8 units (``block<i>``, ``block<i>.<part>``) left in float
    site_ranges: list[tuple[int8.Range, int8.Range]] | None  # static INT8: :func:`calibrate_sites`'s, reused
    metadata: tuple[tuple[str, bytes], ...]  # extra model metadata entries


def int8_mode_for(net: m.Network, int8_mode: str = "auto") -> str:
    """``static`` or ``dynamic``: ``auto`` is dynamic range for every network (closer to FP32
    than static on every shared network, as fast, no calibration: :mod:`.int8`)."""
    if int8_mode == "auto":
        return "dynamic"
    if int8_mode not in ("static", "dynamic"):
        raise ConversionError(f"TFLite writer INT8 mode {int8_mode!r}: expected static, dynamic or auto")
    return int8_mode


def _recording(net: m.Network, board: int) -> tuple[ModelBuilder, Graph, int8.Int8Plan]:
    """The float model with every INT8 site recorded (no file written yet)."""
    plan = int8.Int8Plan()
    mb = ModelBuilder("calibration")
    graph = Graph(net, Ops(mb), board, board, plan)
    graph.build()
    return mb, graph, plan


def site_units(net: m.Network, board: int = 19) -> dict[str, int]:
    """The writer's INT8 units of ``net`` (``block<i>``, in nested bottleneck blocks
    ``block<i>.<part>``) -> how many convolutions / projections each has, in graph order."""
    return int8.units_of(_recording(net, board)[2].sites)


def calibrate_sites(
    net: m.Network, calibration: PositionSet, board: int = 19
) -> list[tuple[int8.Range, int8.Range]]:
    """Input and output ranges of every INT8 site of ``net`` (float units included), measured on
    ``calibration`` in the float model; :func:`build_tflite` takes them as ``site_ranges``."""
    mb, graph, plan = _recording(net, board)
    site_tensors = sorted({i for site in plan.sites for i in (site.input, site.output)})
    mb.outputs += [(f"site{i}", mb.tensor(i)) for i in site_tensors]  # kept by XNNPACK too
    inputs = (graph.spatial.index, graph.global_in.index)
    return int8.calibrate(mb.finish(), plan.sites, inputs, calibration)


def build_tflite(net: m.Network, precision: str = "fp32", **options: Unpack[WriterOptions]) -> bytes:
    """The ``.tflite`` flatbuffer of ``net`` at ``precision`` for a ``board`` x ``board`` buffer
    (:class:`WriterOptions`). ``int8``: ``int8_mode`` ``static`` needs ``calibration`` positions
    (or their ``site_ranges``), ``dynamic`` does not; ``keep_float`` names units left in float."""
    board = options.get("board", 19)
    if precision == "int8-full":
        raise ConversionError(
            "TFLite int8-full (integer inputs and outputs) needs --tflite-builder tensorflow"
        )
    if precision not in PRECISIONS:
        raise ConversionError(
            f"TFLite writer precision {precision!r}: expected one of {', '.join(PRECISIONS)}"
        )
    if net.meta_encoder_version or net.trunk.metadata_encoder is not None:
        raise ConversionError(f"{net.name}: human-SL networks with an SGF-metadata encoder are not supported")
    mode = int8_mode_for(net, options.get("int8_mode", "auto"))
    plan: int8.Int8Plan | None = None
    if precision == "int8":
        named = options.get("keep_float")
        keep = int8.float_units(named, site_units(net, board)) if named else frozenset()
        ranges = options.get("site_ranges")
        calibration = options.get("calibration")
        if mode == "static" and ranges is None:
            if calibration is None:
                raise ConversionError("INT8 TFLite needs calibration positions")
            ranges = calibrate_sites(net, calibration, board)
        dynamic = mode == "dynamic"
        plan = int8.Int8Plan(ranges=None if dynamic else ranges, dynamic=dynamic, float_units=keep)
    mb = ModelBuilder(f"katago-edge tflite writer: {net.name} ({precision})")
    Graph(net, Ops(mb, weights="fp16" if precision == "fp16" else "fp32"), board, board, plan).build()
    mb.metadata.append((METADATA_NAME, json.dumps(net.postprocess.to_dict(), sort_keys=True).encode()))
    mb.metadata.extend(options.get("metadata", ()))
    return mb.finish()


def write_tflite(
    net: m.Network, out_path: Path, precision: str = "fp32", **options: Unpack[WriterOptions]
) -> Path:
    """Write ``net`` as a ``.tflite`` file atomically at ``out_path`` (no TensorFlow involved)."""
    data = build_tflite(net, precision, **options)
    atomic_write_bytes(out_path, data)
    logger.info("wrote %s (%s, %.1f MB, direct writer)", out_path, precision, len(data) / 1e6)
    return out_path


def read_postprocess_metadata(path: Path) -> m.PostProcessParams | None:
    """The post-processing parameters stored in a ``.tflite`` file, or None when it has none
    (e.g. a file built by TensorFlow)."""
    raw = flatbuf.read_metadata(path, METADATA_NAME)
    if raw is None:
        return None
    try:
        return m.PostProcessParams.from_dict(json.loads(raw.decode()))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConversionError(f"{path}: bad {METADATA_NAME} metadata: {exc}") from exc
