"""Position sets (SGF records, self-play) and the manifest written beside converted networks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edge_fixtures import model_file, open_model

from agent.errors import ConversionError
from agent.models.manifest import Manifest, manifest_path, read_manifest, write_network_and_manifest
from agent.models.positions import positions_from_selfplay, positions_from_sgf


def test_positions__sgf_sample_is_seeded_encoded_and_respects_exclusions(reference_dir: Path) -> None:
    sgf = reference_dir / "sgf"
    a = positions_from_sgf(sgf, 40, seed=3)
    b = positions_from_sgf(sgf, 40, seed=3)
    assert a.ids == b.ids and len(a) == 40
    assert a.spatial.shape == (40, 22, 19, 19) and a.global_.shape == (40, 19)
    areas = {int(a.spatial[i, 0].sum()) for i in range(40)}
    assert areas <= {81, 117, 169, 361} and 361 in areas  # 9x9, 13x9, 13x13, 19x19 games
    c = positions_from_sgf(sgf, 40, seed=3, exclude=a.ids)
    assert not set(a.ids) & set(c.ids)
    empty = [i for i, pid in enumerate(a.ids) if pid.endswith("#0")]
    for i in empty:  # the empty board: no stones of either colour
        assert a.spatial[i, 1:3].sum() == 0


def test_positions__no_usable_games_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "junk.sgf").write_text("(;GM[1]SZ[25])")  # 25x25 does not fit a 19x19 buffer
    with pytest.raises(ConversionError, match="no usable games"):
        positions_from_sgf(tmp_path, 10)
    with pytest.raises(ConversionError, match="no such SGF file or folder"):
        positions_from_sgf(tmp_path / "missing", 10)


def test_positions__selfplay_with_the_fp32_net(models_dir: Path, model_store: Any) -> None:
    net = open_model(model_file(models_dir, "b6c96"), model_store)
    ps = positions_from_selfplay(net, 24, games=4, seed=5)
    assert len(ps) == 24 and len(set(ps.ids)) == 24
    assert all(pid.startswith("selfplay-5-") for pid in ps.ids)
    stones = ps.spatial[:, 1:3].sum(axis=(1, 2, 3))
    assert stones.max() > 0  # games progressed past the empty board
    assert np.all(ps.spatial[:, 0].sum(axis=(1, 2)) >= 81)


def test_manifest__written_after_the_network_and_read_back(tmp_path: Path) -> None:
    target = tmp_path / "net.onnx"
    manifest = Manifest(
        format="onnx",
        precision="int8",
        file="",
        sha256="",
        source={"path": "x.bin.gz", "name": "x", "model_version": 8, "sha256": "ab"},
        calibration={"source": "sgf:games", "method": "percentile", "positions": 2, "ids": ["a#1", "b#2"]},
    )
    mpath = write_network_and_manifest(target, b"onnx bytes", manifest)
    assert mpath == manifest_path(target) and mpath.name == "net.onnx.manifest.json"
    data = json.loads(mpath.read_text())
    assert data["file"] == "net.onnx" and len(data["sha256"]) == 64
    assert data["tools"]["onnxruntime"]
    back = read_manifest(target)
    assert back is not None and back.calibration == manifest.calibration and back.precision == "int8"
    assert read_manifest(tmp_path / "other.onnx") is None
    mpath.write_text("{not json")
    with pytest.raises(ConversionError, match="unreadable manifest"):
        read_manifest(target)
