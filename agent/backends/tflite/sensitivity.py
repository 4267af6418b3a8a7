"""Pieces of the INT8 sensitivity pass for the direct TFLite writer: its units, and its INT8 model
with some units in float (the counterpart of :mod:`agent.backends.onnx.sensitivity`; the pass
itself, shared with ONNX, is :mod:`agent.models.sensitivity`).

**Units** (:func:`agent.backends.tflite.writer.site_units`) group the convolutions and projections
the writer can write in int8 (the trunk's; the initial convolution, the heads, global pooling and
its matmuls, norms and attention scores are float in every writer INT8 model):

* ``block<i>``: a trunk block (b6c96: 6 units; b7c96: 14, an attention or an FFN block each;
  b10c384: 10 nested bottleneck blocks of 20 projections and convolutions each).

The writer also has finer units inside nested bottleneck blocks (``block<i>.bottleneck``,
``block<i>.attention``, ``block<i>.ffn``; ``--keep-float`` takes them), but the pass measures whole
blocks (:func:`block_units`): on b10c384 a measurement takes ~2.5 min on the shared 2-vCPU machine
(200 positions), so 30 units would be over an hour before the first choice.

**Variants** (:class:`WriterInt8`): every site's activation ranges are calibrated once, in the
float model (static mode; dynamic range needs none), and each variant is written again from the
parsed network with those ranges and the float units named (the writer takes 0.1-2 s), so a
variant is the model that converting with those units kept float gives, without a second
calibration. The pass's report rides in the file as the metadata entry :data:`METADATA_NAME`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from agent.backends.tflite import flatbuf
from agent.backends.tflite.writer import build_tflite, calibrate_sites, int8_mode_for, site_units
from agent.errors import ConversionError
from agent.network import model as m
from agent.network.tensors import PositionSet

METADATA_NAME = "katago_edge_int8_sensitivity"


class WriterInt8:
    """The writer's INT8 models of one network, calibrated once, with any units kept float."""

    def __init__(
        self, net: m.Network, calibration: PositionSet | None, *, board: int = 19, int8_mode: str = "auto"
    ) -> None:
        self.net, self.board = net, board
        self.mode = int8_mode_for(net, int8_mode)
        self.units = block_units(site_units(net, board))
        self.ranges = None
        if self.mode == "static":
            if calibration is None:
                raise ConversionError("INT8 TFLite (static) needs calibration positions")
            self.ranges = calibrate_sites(net, calibration, board)

    def build(self, float_units: Iterable[str], report: dict[str, Any] | None = None) -> bytes:
        """The INT8 model with ``float_units`` in float (and the pass's ``report`` in its metadata)."""
        text = None if report is None else json.dumps(report, separators=(",", ":"))
        metadata = () if text is None else ((METADATA_NAME, text.encode()),)
        return build_tflite(
            self.net,
            "int8",
            board=self.board,
            int8_mode=self.mode,
            keep_float=tuple(float_units),
            site_ranges=self.ranges,
            metadata=metadata,
        )


def block_units(units: dict[str, int]) -> dict[str, int]:
    """The pass's units: whole trunk blocks (``block<i>.<part>`` units added up into ``block<i>``)."""
    blocks: dict[str, int] = {}
    for unit, sites in units.items():
        block = unit.partition(".")[0]
        blocks[block] = blocks.get(block, 0) + sites
    return blocks


def read_report(data: bytes) -> dict[str, Any] | None:
    """The pass's report stored in a writer-built ``.tflite`` flatbuffer, or None when it did not run."""
    raw = flatbuf.metadata_entry(data, METADATA_NAME)
    result: dict[str, Any] | None = None if raw is None else json.loads(raw.decode())
    return result
