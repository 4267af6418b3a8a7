"""Issue #17: the bench's INT8-against-FP32 record and its lines in the table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bench_rows import row
from edge_fixtures import model_file

from agent.bench.report import int8_vs_fp32, int8_vs_fp32_lines
from agent.cli import main as cli

SENSITIVITY_EXTRA: dict[str, Any] = {
    "int8_mode": "static",
    "int8_float_groups": ["block0", "policy_head"],
    "int8_sensitivity": {
        "positions": 200,
        "units": {"initial": 1, "block0": 2, "block1": 2, "policy_head": 2},
        "all_int8": {"winrate_p99": 0.041, "lead_p99": 1.7, "top1": 0.91, "policy_kl_mean": 0.01},
        "alone": {
            "block0": {
                "winrate_p99": 0.02,
                "lead_p99": 0.9,
                "top1": 0.96,
                "policy_kl_mean": 0.003,
                "cost": 1.25,
            }
        },
        "steps": [],
        "float_units": ["block0", "policy_head"],
        "passed": True,
        "margin": 0.8,
        "start": ["policy_head"],
    },
}


def test_int8_vs_fp32__best_pair_above_and_below_target() -> None:
    rows = [
        row("onnx", "fp32", 1, 100.0),
        row("onnx", "fp32", 8, 200.0),
        row("onnx", "int8", 1, 150.0),  # 1.5x: the best pair
        row("onnx", "int8", 8, 240.0),  # 1.2x
        row("tflite", "fp32", 1, 50.0),
        row("tflite", "int8", 1, 125.0),  # 2.5x
        row("tflite", "int8", 8, 900.0),  # no fp32 figure at batch 8: no pair
        row("numpy", "fp32", 1, 40.0),  # no int8 at all: no record
    ]
    verified = {"onnx/fp32": True, "onnx/int8": True, "tflite/fp32": True, "tflite/int8": True}
    manifests = {"onnx/int8": (SENSITIVITY_EXTRA, "/store/onnx/x-int8.onnx.manifest.json")}
    records = int8_vs_fp32(rows, verified, manifests)
    assert set(records) == {"onnx", "tflite"}
    onnx, tflite = records["onnx"], records["tflite"]
    assert (onnx["ratio"], onnx["batch"], onnx["threads"]) == (1.5, 1, 1)
    assert (onnx["int8_evals_per_s"], onnx["fp32_evals_per_s"]) == (150.0, 100.0)
    assert [p["ratio"] for p in onnx["pairs"]] == [1.5, 1.2]
    assert onnx["counted"] is True and onnx["reaches_target"] is False
    fl = onnx["float"]
    assert fl["float_units"] == ["block0", "policy_head"] and (fl["float_count"], fl["unit_count"]) == (2, 4)
    assert fl["costs"]["block0"]["cost"] == 1.25
    assert fl["costs"]["policy_head"].startswith("no record")  # start list: never measured alone
    assert fl["manifest"] == "/store/onnx/x-int8.onnx.manifest.json"
    assert tflite["ratio"] == 2.5 and tflite["counted"] is True and tflite["reaches_target"] is True
    assert tflite["float"]["float_units"] == "no record"  # no manifest given for it
    lines = int8_vs_fp32_lines(records)
    assert lines[0].startswith("onnx: int8 150.0 / fp32 100.0 evals/s = 1.50x (batch 1, 1 thread), verified")
    assert "below 2x: 2 of 4 units float (block0: INT8 alone cost 1.250, winrate p99 0.0200" in lines[0]
    assert "policy_head: no record" in lines[0] and "every unit INT8: winrate p99 0.0410" in lines[0]
    assert (
        lines[1] == "tflite: int8 125.0 / fp32 50.0 evals/s = 2.50x (batch 1, 1 thread), verified, reaches 2x"
    )


def test_int8_vs_fp32__failed_int8_is_shown_marked_and_not_counted() -> None:
    rows = [row("onnx", "fp32", 1, 100.0), row("onnx", "int8", 1, 300.0)]
    records = int8_vs_fp32(
        rows, {"onnx/fp32": True, "onnx/int8": False}, {}, statuses={"onnx/int8": "forced"}
    )
    rec = records["onnx"]
    assert rec["ratio"] == 3.0 and rec["int8_verified"] is False
    assert rec["counted"] is False and rec["reaches_target"] is False  # 3x, but never the achievement
    assert rec["float"]["float_units"] == "no record" and rec["float"]["costs"] == "no record"
    (line,) = int8_vs_fp32_lines(records)
    assert "= 3.00x" in line and "INT8 NOT VERIFIED (forced): not counted" in line
    assert "reaches" not in line and "float units: no record in the manifest" in line


def test_int8_vs_fp32__fixed_float_groups_and_skipped_int8() -> None:
    rows = [row("onnx", "fp32", 1, 100.0), row("onnx", "int8", 1, 110.0), row("tflite", "fp32", 1, 90.0)]
    extra = {"int8_mode": "static", "int8_float_groups": ["initial"]}
    records = int8_vs_fp32(
        rows,
        {"onnx/fp32": True, "onnx/int8": True, "tflite/fp32": True},
        {"onnx/int8": (extra, None)},
        skipped={"tflite/int8": "verification failed: top-1 0.93 < 0.95"},
    )
    fl = records["onnx"]["float"]
    assert fl["source"] == "int8_float_groups" and fl["float_units"] == ["initial"]
    assert fl["unit_count"] == "no record" and fl["costs"] == {"initial": "no record"}
    assert records["tflite"] == {
        "ratio": None,
        "int8_skipped": "verification failed: top-1 0.93 < 0.95",
        "counted": False,
    }
    lines = int8_vs_fp32_lines(records)
    assert "1 unit float (initial: no record)" in lines[0]
    assert lines[1] == "tflite: int8 not measured (verification failed: top-1 0.93 < 0.95)"


def test_bench_command__int8_vs_fp32_printed_equals_json_and_manifest(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = model_file(models_dir, "b6c96")
    out = tmp_path / "bench.json"
    rc = cli.run(
        ["bench", "--model", str(model), "--runtimes", "tflite", "--precisions", "fp32,int8", "--batches", "1",
         "--threads", "1", "--reps", "3", "--no-search", "--no-e2e", "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    rec = report["int8_vs_fp32"]["tflite"]
    figures = {r["precision"]: r["evals_per_s"] for r in report["nn"]["results"]}
    assert rec["int8_evals_per_s"] == figures["int8"] and rec["fp32_evals_per_s"] == figures["fp32"]
    assert rec["ratio"] == pytest.approx(figures["int8"] / figures["fp32"], abs=5e-4)
    assert (rec["batch"], rec["threads"]) == (1, 1)
    assert rec["int8_verified"] is report["nn"]["verified"]["tflite/int8"] is True
    assert rec["reaches_target"] is (rec["ratio"] >= 2.0)
    printed = " ".join(capsys.readouterr().err.split())
    line = (
        f"tflite: int8 {figures['int8']:.1f} / fp32 {figures['fp32']:.1f} evals/s = {rec['ratio']:.2f}x "
        "(batch 1, 1 thread), verified"
    )
    assert "INT8 vs FP32" in printed and line in printed
    # the float units as the INT8 artifact's manifest (in the run's model store) records them
    fl = rec["float"]
    manifest = json.loads(Path(fl["manifest"]).read_text())
    assert manifest["precision"] == "int8" and manifest["format"] == "tflite"
    assert fl["float_units"] == manifest["int8_sensitivity"]["float_units"]
    assert fl["unit_count"] == len(manifest["int8_sensitivity"]["units"])
    assert fl["float_always"] == manifest["tflite_int8"]["float_always"]
    assert fl["int8_mode"] == manifest["tflite_int8"]["mode"]
    if not rec["reaches_target"]:
        assert f"below 2x: {fl['float_count']} of {fl['unit_count']} units float" in printed
        assert (
            "always float in the TFLite writer (no cost record): " + ", ".join(fl["float_always"]) in printed
        )
    else:
        assert f"{line}, reaches 2x" in printed
