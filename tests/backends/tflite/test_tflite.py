"""TFLite conversion (TensorFlow, workstation side) and the LiteRT runtime (device side).

Judged twice: against the numpy reference forward pass on the same inputs, and, through the shared
post-processing, against KataGo's recorded ``kata-raw-nn`` outputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edge_fixtures import model_file, row_context

from agent.backends.base import NNInputs
from agent.backends.numpy.runtime import forward
from agent.errors import ConversionError, InferenceError
from agent.models.positions import positions_from_sgf
from agent.network.postprocess import postprocess_row
from agent.network.reader import read_network

pytest.importorskip("tensorflow", reason="TFLite conversion needs the `convert` extra (tensorflow-cpu)")

from agent.backends.tflite import builder as tb
from agent.backends.tflite.runtime import TFLiteNet

REF_FILES = {"b6c96": "rawnn-g170-b6c96.jsonl", "b7c96-gqa": "rawnn-b7c96h6kv3qk32v16tflrs.jsonl"}


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def inputs(reference_dir: Path) -> dict[str, np.ndarray]:
    z = np.load(reference_dir / "inputs-v7.npz")
    return {"ids": z["ids"], "spatial": z["spatial"], "global": z["global"]}


@pytest.mark.slow
@pytest.mark.parametrize("key", ["b6c96", "b7c96-gqa"])
def test_tflite_fp32__matches_reference_and_katago(
    key: str, models_dir: Path, reference_dir: Path, inputs: dict[str, np.ndarray], tmp_path: Path
) -> None:
    net = read_network(model_file(models_dir, key))
    path = tb.convert(net, tmp_path / f"{key}.tflite", "fp32")
    runtime = TFLiteNet(path, threads=1)
    idx = np.arange(0, len(inputs["ids"]), 4)  # 25 positions of every board size and rules set
    spatial, global_ = inputs["spatial"][idx], inputs["global"][idx]
    got = runtime.evaluate(NNInputs(spatial, global_))
    ref = forward(net, spatial, global_)
    # raw outputs against the numpy reference
    assert np.abs(_softmax(got.value) - _softmax(ref.value)).max() < 1e-4
    assert np.abs(got.policy - ref.policy).max() < 1e-3
    assert np.abs(got.ownership - ref.ownership).max() < 1e-3
    # post-processed outputs against KataGo's records
    records = {r["id"]: r for r in map(json.loads, (reference_dir / REF_FILES[key]).read_text().splitlines())}
    for row, i in enumerate(idx):
        rec = records[str(inputs["ids"][i])]
        bx, by = rec["board_x_size"], rec["board_y_size"]
        ev = postprocess_row(
            got, row, net.postprocess, row_context(rec, spatial[row], global_[row]), policy_optimism=0.2
        )
        raw = rec["rawnn"]
        assert ev.white_win == pytest.approx(raw["whiteWin"], abs=1e-4), rec["id"]
        assert ev.white_lead == pytest.approx(raw["whiteLead"], abs=0.01), rec["id"]
        want = np.array([np.nan if p is None else p for p in raw["policy"]], dtype=np.float64)
        have = np.asarray(ev.policy[: bx * by], dtype=np.float64)
        assert np.array_equal(np.isnan(want), ~ev.legal[: bx * by]), rec["id"]
        assert np.nanmax(np.abs(have[~np.isnan(want)] - want[~np.isnan(want)])) < 1e-4, rec["id"]
        assert np.abs(np.asarray(ev.white_ownership[: bx * by]) - raw["whiteOwnership"]).max() < 1e-3


def _katago_rows(
    net: Any, got: Any, spatial: np.ndarray, global_: np.ndarray, ids: np.ndarray, records: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per position: |win-rate error| against KataGo's record, KataGo's policy at our top move
    relative to KataGo's best, and our top move."""
    win_err, rel, ours = [], [], []
    for row, pid in enumerate(ids):
        rec = records[str(pid)]
        bx, by = rec["board_x_size"], rec["board_y_size"]
        ev = postprocess_row(
            got, row, net.postprocess, row_context(rec, spatial[row], global_[row]), policy_optimism=0.2
        )
        raw = rec["rawnn"]
        want = np.array([-1.0 if p is None else p for p in raw["policy"]], dtype=np.float64)
        have = np.nan_to_num(np.asarray(ev.policy[: bx * by], dtype=np.float64), nan=-1.0)
        win_err.append(abs(ev.white_win - raw["whiteWin"]))
        rel.append(want[int(have.argmax())] / want.max())
        ours.append(int(have.argmax()))
    return np.array(win_err), np.array(rel), np.array(ours)


@pytest.mark.slow
def test_tflite_int8__selective_model_keeps_katago_top_move(
    models_dir: Path, reference_dir: Path, inputs: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """Default ``int8``: trunk convolutions quantized, heads/pooling/norms float; judged against
    KataGo's recorded outputs on the 99 reference positions (calibrated on SGF positions)."""
    net = read_network(model_file(models_dir, "b6c96"))
    cal = positions_from_sgf(reference_dir / "sgf", 64, seed=7)

    def representative() -> list[tuple[np.ndarray, np.ndarray]]:
        return [(cal.spatial[i : i + 1], cal.global_[i : i + 1]) for i in range(len(cal))]

    path = tb.convert(net, tmp_path / "b6c96.int8.tflite", "int8", representative=representative)
    assert path.stat().st_size < net.num_parameters * 4 * 0.45, "trunk weights in int8"
    ops = _op_types(path)
    assert ops["CONV_2D"] == 20 and ops["QUANTIZE"] >= 6 and ops["DEQUANTIZE"] >= 6, ops
    spatial, global_, ids = inputs["spatial"], inputs["global"], inputs["ids"]
    records = {
        r["id"]: r for r in map(json.loads, (reference_dir / REF_FILES["b6c96"]).read_text().splitlines())
    }
    got = TFLiteNet(path, threads=1).evaluate(NNInputs(spatial, global_))
    win_err, rel, top = _katago_rows(net, got, spatial, global_, ids, records)
    fp32 = forward(net, spatial, global_)
    _, fp32_rel, fp32_top = _katago_rows(net, fp32, spatial, global_, ids, records)
    assert (fp32_rel == 1.0).all()
    # Measured (TF 2.21, LiteRT 2.3, 64 calibration positions): same top move as FP32 on 0.91 of the
    # positions; the others are near-ties (empty boards' symmetric points...) but one, where the INT8
    # pick has half of KataGo's best policy. Win-rate error mean 0.007, max 0.042.
    # (`katago-edge convert`'s verification on 200 game positions: top-1 0.96, docs/conversion.md.)
    assert (top == fp32_top).mean() >= 0.87
    assert (rel >= 0.8).mean() >= 0.97
    assert float(win_err.mean()) < 0.012
    assert float(win_err.max()) < 0.07


@pytest.mark.slow
def test_tflite_int8__transformer_defaults_to_dynamic_range(
    models_dir: Path, reference_dir: Path, inputs: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """A transformer net gets dynamic-range INT8 (no calibrated activation scales); judged against
    KataGo's records of the b7c96 GQA test net on the 99 reference positions."""
    net = read_network(model_file(models_dir, "b7c96-gqa"))
    spatial, global_, ids = inputs["spatial"], inputs["global"], inputs["ids"]

    def representative() -> list[tuple[np.ndarray, np.ndarray]]:
        return [(spatial[i : i + 1], global_[i : i + 1]) for i in range(4)]

    path = tb.convert(net, tmp_path / "gqa.int8.tflite", "int8", representative=representative)
    ops = _op_types(path)
    assert "QUANTIZE" not in ops and ops["BATCH_MATMUL"] == 14, ops
    records = {
        r["id"]: r for r in map(json.loads, (reference_dir / REF_FILES["b7c96-gqa"]).read_text().splitlines())
    }
    got = TFLiteNet(path, threads=1).evaluate(NNInputs(spatial, global_))
    win_err, rel, top = _katago_rows(net, got, spatial, global_, ids, records)
    _, _, fp32_top = _katago_rows(net, forward(net, spatial, global_), spatial, global_, ids, records)
    # Measured: top-1 0.96 vs FP32, every pick >= 0.8 of KataGo's best; win-rate error mean 0.005,
    # max 0.037 (the static selective model: 0.93 and 0.011 / 0.081).
    assert (top == fp32_top).mean() >= 0.93
    assert (rel >= 0.8).mean() >= 0.97
    assert float(win_err.mean()) < 0.01
    assert float(win_err.max()) < 0.06


def _op_types(path: Path) -> dict[str, int]:
    from ai_edge_litert.interpreter import Interpreter

    counts: dict[str, int] = {}
    for op in Interpreter(model_path=str(path))._get_ops_details():
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return counts


def test_tflite_int8_options__scopes_and_groups() -> None:
    opts = tb.int8_options()
    assert opts.float_scopes == tb.INT8_FLOAT_LAYERS + tb.INT8_FLOAT_PARTS
    assert set(tb.int8_options(["block0", "ffn_out"]).float_scopes) >= {"block0", "ffn_out", "rmsnorm"}
    with pytest.raises(ConversionError, match="unknown TFLite layer groups"):
        tb.int8_options(["blockx"])
    # fused TFLite names, TensorFlow's suffixes on repeated scopes
    assert tb._in_scopes("block3/inner0/rmsnorm/mul;block3/inner0/rmsnorm/Rsqrt", ("rmsnorm",))
    assert tb._in_scopes("block2/bottleneck_1/Conv2D", ("bottleneck",))
    assert not tb._in_scopes("block2/Conv2D", ("block",))
    assert not tb._in_scopes("rmsnorm", ("rmsnorm",)), "the op name itself is not a scope"
    assert opts.describe()["quantized_ops"] == ["CONV_2D", "FULLY_CONNECTED"]
    assert opts.mode == "static" and opts.percentile == 99.9999
    assert tb.int8_options(mode="dynamic").describe()["mode"] == "dynamic"
    with pytest.raises(ConversionError, match="keep-float"):
        tb.int8_options(["block1"], mode="dynamic")


def test_tflite_int8_options__auto_mode_follows_the_architecture(models_dir: Path) -> None:
    conv_net = read_network(model_file(models_dir, "b6c96"))
    transformer = read_network(model_file(models_dir, "b7c96-gqa"))
    assert not tb.has_attention(conv_net) and tb.has_attention(transformer)
    assert tb.int8_options(mode="auto", net=conv_net).mode == "static"
    assert tb.int8_options(mode="auto", net=transformer).mode == "dynamic"
    assert tb.int8_options(["block0"], mode="auto", net=transformer).mode == "static", "--keep-float: static"


def test_tflite__int8_without_calibration_is_a_clear_error(models_dir: Path, tmp_path: Path) -> None:
    net = read_network(model_file(models_dir, "b6c96"))
    out = tmp_path / "x.tflite"
    with pytest.raises(ConversionError, match="representative dataset"):
        tb.convert(net, out, "int8")
    with pytest.raises(ConversionError, match="precision 'int4'"):
        tb.convert(net, out, "int4")
    assert not list(tmp_path.iterdir()), "no partial output"


def test_tflite_runtime__rejects_a_file_that_is_not_tflite(tmp_path: Path) -> None:
    bad = tmp_path / "net.tflite"
    bad.write_bytes(b"KataGo network, not a flatbuffer" * 10)
    with pytest.raises(InferenceError, match=r"net\.tflite"):
        TFLiteNet(bad)


@pytest.mark.slow
@pytest.mark.parametrize("builder", ["writer", "tensorflow"])
def test_tflite_convert_cli__int8_manifest_records_what_stays_float(
    builder: str, models_dir: Path, reference_dir: Path, tmp_path: Path
) -> None:
    from agent.cli.main import run

    out = tmp_path / "b6.int8.tflite"
    sgf = str(reference_dir / "sgf")
    args = ["convert", str(model_file(models_dir, "b6c96")), "--to", "tflite", "--precision", "int8"]
    args += [
        "-o",
        str(out),
        "--calibration",
        sgf,
        "--calibration-positions",
        "32",
        "--tflite-builder",
        builder,
    ]
    args += ["--positions", sgf, "--verify-positions", "40", "--force", "--threads", "1"]
    assert run(args) in (0, 1)  # 1: verification failed (lead p99), written with --force
    manifest = json.loads((tmp_path / "b6.int8.tflite.manifest.json").read_text())
    record = manifest["tflite_int8"]
    if builder == "writer":  # the default: dynamic range, the sensitivity pass chooses the float blocks
        assert (record["builder"], record["mode"]) == ("writer", "dynamic")
        assert record["keep_float"] == "chosen by the sensitivity pass"
        assert {"policy_head", "value_head", "initial", "rmsnorm", "attention_core"} <= set(
            record["float_always"]
        )
        assert manifest["int8_float_groups"] == []  # every block INT8 passes on these positions
        assert manifest["calibration"] is None  # dynamic range: no activation calibration
        assert manifest["verification"]["passed"] is True
        assert manifest["verification"]["policy_top1_agreement"] >= 0.9
        assert TFLiteNet(out, threads=1).info.board_x == 19
        return
    assert record["mode"] == "static" and record["quantized_ops"] == ["CONV_2D", "FULLY_CONNECTED"]
    assert {"policy_head", "value_head", "initial", "rmsnorm", "attention_core"} <= set(
        record["float_scopes"]
    )
    assert manifest["calibration"]["positions"] == 32
    assert manifest["verification"]["policy_top1_agreement"] >= 0.9
    assert TFLiteNet(out, threads=1).info.board_x == 19
