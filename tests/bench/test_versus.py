"""The KataGo comparison's arithmetic and the verified-only rule (suggestion, --apply, ratios)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from agent.bench.report import apply_suggestion, suggest
from agent.bench.search import SearchResult
from agent.bench.versus import Tally, VersusRow, overhead_ratio, ratio_if_verified, spread, versus_table
from agent.cli.bench import _add_ratios


def _row(
    runtime: str, precision: str, eps: float, spread_: float = 0.02, batch: int = 1
) -> dict[str, object]:
    return {
        "runtime": runtime,
        "precision": precision,
        "batch": batch,
        "threads": 1,
        "evals_per_s": eps,
        "latency": {"spread": spread_},
    }


@pytest.mark.parametrize(
    ("visits_per_s", "evals_per_s", "expected"),
    [(95.0, 100.0, 0.95), (132.0, 120.0, 1.1), (50.0, 0.0, 0.0)],
)
def test_overhead_ratio__visits_over_standalone_evals(
    visits_per_s: float, evals_per_s: float, expected: float
) -> None:
    assert overhead_ratio(visits_per_s, evals_per_s) == pytest.approx(expected)


def test_overhead_ratio__the_search_bench_reports_the_same_computation() -> None:
    r = SearchResult(
        threads=1,
        visits=100,
        positions=8,
        wall_s=8.0,
        visits_per_s=100.0,
        standalone_evals_per_s=125.0,
        nn_evals_per_s=110.0,
        avg_batch=1.0,
        nn_time_share=0.9,
    )
    assert r.overhead_ratio == pytest.approx(overhead_ratio(100.0, 125.0)) == pytest.approx(0.8)


def test_tally__visits_per_second_per_cpu_second_cores_and_spread() -> None:
    t = Tally()
    t.add(0, 400, 4.0, 4.2)  # round 0: two positions
    t.add(0, 400, 4.0, 3.8)
    t.add(1, 800, 10.0, 8.0)  # round 1: slower
    assert t.visits_per_s == pytest.approx(1600 / 18.0)
    assert t.visits_per_cpu_s == pytest.approx(1600 / 16.0)
    assert t.cores_used == pytest.approx(16.0 / 18.0)
    assert t.spread == pytest.approx((100.0 - 80.0) / 90.0)  # (max - min) / median of 100 and 80
    assert spread([5.0]) == 0.0


def test_ratio_if_verified__none_for_a_variant_that_failed_verification() -> None:
    assert ratio_if_verified(150.0, 100.0, True) == 1.5
    assert ratio_if_verified(450.0, 100.0, False) is None
    assert ratio_if_verified(150.0, 0.0, True) is None


def _versus(variant: str, verified: bool, ours_vps: float, katago_vps: float) -> VersusRow:
    ours, katago = Tally(), Tally()
    ours.add(0, int(ours_vps * 10), 10.0, 10.0)
    katago.add(0, int(katago_vps * 10), 10.0, 10.0)
    return VersusRow(variant, verified, 1, 1, ours, katago)


def test_ratios_vs_katago__failing_variants_are_shown_marked_and_never_counted() -> None:
    rows = [
        _versus("onnx/fp32", True, 120.0, 140.0),
        _versus("tflite/int8", False, 400.0, 140.0),  # fastest, fails verification
        _versus("tflite/fp16", True, 150.0, 140.0),
    ]
    report = {"versus_katago": {"rows": [r.to_dict() for r in rows]}}
    _add_ratios(report)
    ratios = report["ratios_vs_katago"]
    assert ratios["onnx/fp32@1t"] == pytest.approx(120 / 140, abs=1e-3)
    assert "tflite/int8@1t" not in ratios
    assert ratios["best_verified@1t"] == {
        "variant": "tflite/fp16",
        "visits_per_s_ratio": pytest.approx(1.071, abs=1e-3),
    }
    table = versus_table(report["versus_katago"]["rows"])  # type: ignore[arg-type]
    failing = next(cells for cells in table if cells[0].startswith("tflite/int8"))
    assert "FAILS verification" in failing[0] and failing[4] == "-" and failing[7] == "-"
    assert failing[2].startswith("400.0") and failing[3].startswith("140.0")  # measured, shown


def test_suggest__never_a_variant_that_failed_or_missed_verification_and_apply_writes_it(
    tmp_path: Path,
) -> None:
    rows = [_row("onnx", "fp32", 100.0), _row("tflite", "int8", 400.0), _row("onnx", "int8", 60.0)]
    s = suggest(rows, {"onnx/fp32": True, "tflite/int8": False}, cores=2)  # onnx/int8: no verdict
    assert s is not None and (s.runtime, s.precision) == ("onnx", "fp32")
    assert any("tflite/int8" in r and "onnx/int8" in r for r in s.reasons)
    assert suggest(rows, {"tflite/int8": False}, cores=2) is None  # nothing verified, nothing to apply
    cfg = tmp_path / "agent.toml"
    apply_suggestion(cfg, s)
    assert tomllib.loads(cfg.read_text())["overrides"]["runtimes"] == [
        {"runtime": "onnx", "precision": "fp32"}
    ]


@pytest.mark.parametrize(
    ("onnx_eps", "tflite_eps", "expected"),
    [
        (100.0, 103.0, ("onnx", "fp32")),  # within 5 %: a tie, the runtime listed first
        (103.0, 100.0, ("onnx", "fp32")),  # the same pick when the noise goes the other way
        (100.0, 120.0, ("tflite", "fp32")),  # beyond the margin: the faster one
    ],
)
def test_suggest__stable_within_the_margin(
    onnx_eps: float, tflite_eps: float, expected: tuple[str, str]
) -> None:
    rows = [_row("onnx", "fp32", onnx_eps), _row("tflite", "fp32", tflite_eps)]
    s = suggest(rows, {"onnx/fp32": True, "tflite/fp32": True}, cores=2)
    assert s is not None and (s.runtime, s.precision) == expected


def test_suggest__the_spread_widens_the_margin_and_ties_prefer_the_exact_precision() -> None:
    rows = [_row("tflite", "fp32", 100.0, spread_=0.3), _row("tflite", "fp16", 120.0, spread_=0.3)]
    s = suggest(rows, {"tflite/fp32": True, "tflite/fp16": True}, cores=2)
    assert s is not None and s.precision == "fp32"  # 20 % faster, but inside a 30 % spread
