"""Helpers shared by tests (import them as ``from edge_fixtures import ...``).

Not in ``conftest.py``: several test folders have their own conftest, so ``from conftest import``
resolves to whichever was imported first when the whole suite runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.network.postprocess import RowContext, legal_mask_from_features

HOW_TO_GET = (
    "set KATAGO_EDGE_MODELS to a folder with KataGo networks (in this project's CI: ../shared/models; "
    "or `katago-edge fetch-model katrain` to fetch b10c384h6nbttflrs from the katrain wheel)"
)

NETS = {
    "b6c96": "g170-b6c96-s175395328-d26788732.bin.gz",
    "b7c96-cnorm": "b7c96h3tfrs-test5-cnorm.bin.gz",
    "b7c96-gqa": "b7c96h6kv3qk32v16tflrs-fson-bnh.bin.gz",
    "b10c384": "b10c384h6nbttflrs.bin.gz",
}


def model_file(models: Path, key: str) -> Path:
    """The network ``NETS[key]`` in ``models``; skips (a failure in CI) when it is missing."""
    path = models / NETS[key]
    if not path.is_file():
        pytest.skip(f"network {NETS[key]} not in {models}: " + HOW_TO_GET)
    return path


def open_model(source: Path, store: Any, runtime: str = "onnx", precision: str = "fp32") -> Any:
    """``source`` loaded with ``runtime``/``precision`` through the model store (built, verified
    and cached once per store), as serve and analysis load it."""
    from agent.models.serving import RuntimeEntry, open_network

    net, _ = open_network(source, [RuntimeEntry(runtime, precision, required=True)], store)
    return net


def row_context(record: dict[str, Any], spatial: np.ndarray, global_: np.ndarray) -> RowContext:
    """Post-processing context of one recorded reference position (board, side to move, legal
    points from its V7 features, whether the rules make a no-result impossible)."""
    bx, by = record["board_x_size"], record["board_y_size"]
    rules = record["kata_rules"]
    return RowContext(
        board_x=bx,
        board_y=by,
        white_to_move=record["next_player"] == "W",
        legal=legal_mask_from_features(spatial, global_, bx, by),
        no_result_impossible=rules["ko"] != "SIMPLE" and rules["scoring"] == "AREA",
    )
