"""TFLite straight from a parsed KataGo network: the flatbuffer is written here, no TensorFlow.

A device that runs LiteRT has ``ai-edge-litert`` (whose ``schema_py_generated`` is the TFLite
schema as Python) and ``flatbuffers``; that is all this module needs, so a phone or a Pi can turn a
``.bin.gz`` into a ``.tflite`` itself. The graph is the forward pass of
:mod:`agent.backends.numpy.runtime` (spec §2) in NHWC, with the same interface as the
TensorFlow-built file (:mod:`agent.backends.tflite.builder`): signature ``serving_default``,
inputs ``spatial`` ``[N, 22, H, W]`` and ``global_in`` ``[N, 19]``, outputs ``policy``
``[N, Cp, H*W]``, ``policy_pass`` ``[N, Cp]``, ``value`` ``[N, 3]``, ``score_value`` ``[N, S]``,
``ownership`` ``[N, H*W]``; the batch axis is dynamic. The graph is :mod:`.graph`, the file
format :mod:`.flatbuf` and :mod:`.ops`, INT8 (static with our own calibration, or dynamic range)
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
    "build_tflite",
    "read_postprocess_metadata",
    "write_tflite",
]


def build_tflite(
    net: m.Network,
    precision: str = "fp32",
    *,
    board: int = 19,
    calibration: PositionSet | None = None,
    int8_mode: str = "auto",
    keep_float: tuple[str, ...] | None = None,
) -> bytes:
    """The ``.tflite`` flatbuffer of ``net`` at ``precision`` for a ``board`` x ``board`` buffer.
    ``int8``: ``int8_mode`` ``static`` needs ``calibration`` positions, ``dynamic`` does not;
    ``auto`` is dynamic for networks with attention blocks, static otherwise; ``keep_float``
    names trunk blocks (``block<i>``) left in float."""
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
    plan: int8.Int8Plan | None = None
    if int8_mode == "auto":
        int8_mode = "dynamic" if net.has_transformer else "static"
    if int8_mode not in ("static", "dynamic"):
        raise ConversionError(f"TFLite writer INT8 mode {int8_mode!r}: expected static, dynamic or auto")
    keep = int8.float_blocks(keep_float, len(net.trunk.blocks))
    if precision == "int8" and int8_mode == "dynamic":
        plan = int8.Int8Plan(dynamic=True, float_blocks=keep)
    elif precision == "int8":
        if calibration is None:
            raise ConversionError("INT8 TFLite needs calibration positions")
        plan = int8.Int8Plan(float_blocks=keep)
        mb = ModelBuilder("calibration")
        graph = Graph(net, Ops(mb), board, board, plan)
        graph.build()
        site_tensors = sorted({i for site in plan.sites for i in (site.input, site.output)})
        mb.outputs += [(f"site{i}", mb.tensor(i)) for i in site_tensors]  # kept by XNNPACK too
        inputs = (graph.spatial.index, graph.global_in.index)
        ranges = int8.calibrate(mb.finish(), plan.sites, inputs, calibration)
        plan = int8.Int8Plan(ranges=ranges, float_blocks=keep)
    mb = ModelBuilder(f"katago-edge tflite writer: {net.name} ({precision})")
    Graph(net, Ops(mb, weights="fp16" if precision == "fp16" else "fp32"), board, board, plan).build()
    mb.metadata.append((METADATA_NAME, json.dumps(net.postprocess.to_dict(), sort_keys=True).encode()))
    return mb.finish()


def write_tflite(
    net: m.Network,
    out_path: Path,
    precision: str = "fp32",
    *,
    board: int = 19,
    calibration: PositionSet | None = None,
    int8_mode: str = "auto",
    keep_float: tuple[str, ...] | None = None,
) -> Path:
    """Write ``net`` as a ``.tflite`` file atomically at ``out_path`` (no TensorFlow involved)."""
    data = build_tflite(
        net, precision, board=board, calibration=calibration, int8_mode=int8_mode, keep_float=keep_float
    )
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
