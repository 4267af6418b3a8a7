from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from bench_rows import row
from edge_fixtures import model_file

from agent.app.config import parse_config
from agent.bench.katago import parse_benchmark_output
from agent.bench.report import Suggestion, apply_suggestion, suggest
from agent.bench.timing import measure, percentile, summarize
from agent.cli import main as cli


def _row(runtime: str, precision: str, batch: int, eps: float) -> dict[str, object]:
    return row(runtime, precision, batch, eps, threads=2)  # measured at two threads


# Result lines as `katago benchmark` prints them (format of KataGo v1.x).
KATAGO_OUTPUT = """\
2026-11-25 21:00:01+0000: Loaded model /models/g170-b6c96.bin.gz
Testing with 10 positions per thread count...
numSearchThreads =  1: 10 / 10 positions, visits/s = 101.27 nnEvals/s = 83.90 nnBatches/s = 83.90 avgBatchSize = 1.00 (19.8 secs)
numSearchThreads =  2: 10 / 10 positions, visits/s = 160.55 nnEvals/s = 131.07 nnBatches/s = 67.12 avgBatchSize = 1.95 (12.5 secs)
Ordered summary of results:
"""


def test_parse_benchmark_output__reads_every_thread_line() -> None:
    lines = parse_benchmark_output(KATAGO_OUTPUT)
    assert [ln.threads for ln in lines] == [1, 2]
    assert lines[0].visits_per_s == pytest.approx(101.27)
    assert lines[1].nn_evals_per_s == pytest.approx(131.07)
    assert lines[1].avg_batch_size == pytest.approx(1.95)
    assert parse_benchmark_output("no results here") == []


def test_timing__percentiles_and_spread() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([1.0, 2.0], 95) == pytest.approx(1.95)
    t = summarize([0.010, 0.011, 0.012, 0.013, 0.100])
    assert t.median_s == 0.012 and t.max_s == 0.100 and t.reps == 5
    assert t.spread > 1.0  # one outlier in five shows up in the p05..p95 spread


def test_measure__warms_up_then_times_at_least_reps() -> None:
    calls = []
    ticks = iter(float(i) for i in range(1000))
    t = measure(lambda: calls.append(1), warmup=3, reps=5, clock=lambda: next(ticks))
    assert len(calls) == 8 and t.reps == 5 and t.median_s == 1.0


def test_suggest__fastest_verified_variant_and_smallest_good_batch() -> None:
    rows = [
        _row("onnx", "fp32", 1, 30.0),
        _row("onnx", "int8", 1, 80.0),
        _row("onnx", "int8", 8, 84.0),
        _row("tflite", "fp16", 8, 200.0),  # fastest, but its verification failed
    ]
    s = suggest(rows, {"onnx/int8": True, "tflite/fp16": False}, cores=4)
    assert s is not None
    assert (s.runtime, s.precision, s.batch_size, s.threads) == ("onnx", "int8", 1, 2)
    assert any("tflite/fp16" in r for r in s.reasons)
    assert suggest([], {}, cores=2) is None


def test_apply_suggestion__chosen_first_then_the_fallback_chain__other_overrides_kept(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '# my device\ndevice_id = "pi-kitchen"\n\n[overrides]\nmax_visits = 800\n\n'
        "[overrides.search]\nbatch_size = 16\n\n[overrides.thermal]\nsoft_limit_c = 70.0\n\n"
        '[mqtt]\nhost = "broker"\n'
    )
    profile = [
        {"runtime": "onnx", "precision": "fp32", "provider": None},
        {"runtime": "onnx", "precision": "int8", "provider": None},
        {"runtime": "numpy", "precision": "fp32", "provider": None},
    ]
    apply_suggestion(cfg, Suggestion("onnx", "int8", 4, 2, 80.0), profile)
    text = cfg.read_text()
    data = tomllib.loads(text)
    assert "# my device" in text and data["device_id"] == "pi-kitchen" and data["mqtt"]["host"] == "broker"
    assert data["overrides"] == {
        "max_visits": 800,
        "runtimes": [
            {"runtime": "onnx", "precision": "int8"},
            {"runtime": "onnx", "precision": "fp32"},
            {"runtime": "numpy", "precision": "fp32"},
        ],
        "search": {"runtime_threads": 4, "batch_size": 2},
        "thermal": {"soft_limit_c": 70.0},
    }
    parse_config(text, str(cfg))  # the agent still accepts the file
    # applied again (another variant won): the chain is what the device had, the new choice first
    apply_suggestion(cfg, Suggestion("tflite", "fp32", 1, 1, 90.0), data["overrides"]["runtimes"])
    again = tomllib.loads(cfg.read_text())["overrides"]
    assert [(r["runtime"], r["precision"]) for r in again["runtimes"]] == [
        ("tflite", "fp32"),
        ("onnx", "int8"),
        ("onnx", "fp32"),
        ("numpy", "fp32"),
    ]
    assert again["thermal"] == {"soft_limit_c": 70.0} and again["max_visits"] == 800
    assert cfg.read_text().count("[overrides]") == 1


def test_bench_command__quick_run_writes_json(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = model_file(models_dir, "b6c96")
    out = tmp_path / "bench.json"
    rc = cli.run(
        [
            "bench",
            "--model",
            str(model),
            "--quick",
            "--runtimes",
            "numpy,onnx",
            "--precisions",
            "fp32",
            "--batches",
            "1,2",
            "--threads",
            "1",
            "--search-threads",
            "1",
            "--visits",
            "8",
            "--reps",
            "2",
            "--no-e2e",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["machine"]["cores"] >= 1 and report["machine"]["memory_mb"] > 0
    rows = {(r["runtime"], r["batch"]): r for r in report["nn"]["results"]}
    assert set(rows) == {("numpy", 1), ("numpy", 2), ("onnx", 1), ("onnx", 2)}
    assert all(r["evals_per_s"] > 0 and r["latency_ms_p95"] >= r["latency_ms_p50"] > 0 for r in rows.values())
    assert report["nn"]["accuracy"]["onnx/fp32"]["passed"] is True
    assert report["nn"]["verified"]["onnx/fp32"] is True  # the model store's verification
    # the search runs on the fastest fp32 variant with that variant's threads (numpy or onnx:
    # on an idle machine they are close for this small net)
    fastest = max(rows.values(), key=lambda r: r["evals_per_s"])
    assert report["search"]["runtime"] == f"{fastest['runtime']}/fp32"
    assert report["search"]["runtime_threads"] == fastest["threads"]
    assert (fastest["runtime"] != "onnx") or fastest["threads"] == 1  # --threads 1
    search = report["search"]["results"][0]
    assert search["threads"] == 1 and search["visits_per_s"] > 0 and search["nn_evals_per_s"] > 0
    assert report["suggestion"]["precision"] == "fp32"
    assert report["peak_rss_mb"] > 0
    printed = " ".join(capsys.readouterr().err.split())  # the table (stderr) has the JSON's CPU split
    assert f"of it the search's own {search['search_cpu_ms_per_visit']:.2f} ms" in printed
    assert f"network CPU / all CPU {search['visits_over_evals_cpu']:.2f}" in printed
