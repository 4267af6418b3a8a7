"""Verification-driven escalation of the INT8 sensitivity pass (agent.models.sensitivity): the
step selection on made-up measurements, and ``run_conversion`` on g170-b6c96 (9x9 buffer) with a
verification that refuses once (an impossible threshold on the first verify only)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from edge_fixtures import model_file

from agent.models import pipeline
from agent.models.manifest import read_manifest
from agent.models.sensitivity import ESCALATIONS, SensitivityReport, escalate_units, summary_of
from agent.models.verify import VerifyReport


def _metrics(winrate: float, lead: float, top1: float) -> dict[str, Any]:
    return {
        "winrate_abs_error": {"mean": winrate / 4, "p99": winrate, "max": winrate},
        "lead_abs_error": {"mean": lead / 4, "p99": lead, "max": lead},
        "score_abs_error": {"mean": 0.0, "p99": 0.0, "max": 0.0},
        "policy_kl": {"mean": 0.001, "p99": 0.01, "max": 0.01},
        "policy_top1_agreement": top1,
        "ownership_abs_error": {"mean": 0.0, "p99": 0.0, "max": 0.0},
    }


def _report() -> SensitivityReport:
    units = {"initial": 1, "u1": 2, "u2": 2, "u3": 2, "u4": 2, "value_head": 1}
    report = SensitivityReport(40, units, {"winrate_p99": 0.1, "lead_p99": 3.0, "top1": 0.9}, {})
    report.float_units = ["initial", "value_head"]
    report.start = ["initial", "value_head"]
    report.passed = True
    report.alone["u4"] = {
        "winrate_p99": 0.01,
        "lead_p99": 0.1,
        "top1": 1.0,
        "cost": 0.9,
    }  # measured by the pass
    return report


def test_escalate_units__measures_missing_costs_and_adds_the_costliest_until_the_margin_holds() -> None:
    report = _report()
    lead_alone = {"u1": 0.2, "u2": 0.6, "u3": 0.4}  # u4's cost is known: not measured again
    measured_alone: list[str] = []
    measured: list[list[str]] = []

    def alone(unit: str) -> dict[str, Any]:
        measured_alone.append(unit)
        return _metrics(0.0, lead_alone[unit], 1.0)

    def measure(float_units: list[str]) -> dict[str, Any]:
        measured.append(list(float_units))
        # lead p99 on held-out + refused: 1.5 with the start list, -0.4 per unit kept float
        return _metrics(0.01, 1.5 - 0.4 * (len(float_units) - 2), 0.99)

    refused = {"winrate_p99": 0.0301, "lead_p99": 1.63, "top1": 0.955}
    record = escalate_units(report, measure, alone, 400, refused)
    assert measured_alone == ["u1", "u2", "u3"]
    assert report.alone["u2"]["cost"] == pytest.approx(0.15)  # lead mean 0.6 / 4 over the limit 1.0
    # costs: u4 0.9 > u2 0.15 > u3 0.1 > u1 0.05; lead 1.5 -> 1.1 -> 0.7 (< 0.8 margin: stop)
    assert measured == [["initial", "value_head", "u4"], ["initial", "value_head", "u4", "u2"]]
    assert record["added"] == ["u4", "u2"] and record["passes"] is True and record["positions"] == 400
    assert [s["lead_p99"] for s in record["steps"]] == [pytest.approx(1.1), pytest.approx(0.7)]
    assert record["refused"] == refused
    assert report.float_units == ["initial", "value_head", "u4", "u2"]
    assert report.escalations == [record]
    assert (
        "escalation 1 (verification refused: 0.0301 / 1.630 / 0.955): u4, u2 kept float" in report.summary()
    )
    assert summary_of(report.to_json()) == report.summary()  # the manifest's copy reads back


def test_escalate_units__adds_at_least_one_unit_and_leaves_one_int8() -> None:
    report = _report()
    costs = {"u1": 0.1, "u2": 0.2, "u3": 0.3}

    def alone(unit: str) -> dict[str, Any]:
        return _metrics(0.0, 4 * costs[unit], 1.0)

    record = escalate_units(report, lambda _f: _metrics(0.0, 0.0, 1.0), alone, 400, {})
    assert record["added"] == ["u4"] and record["passes"] is True  # held the margin already: one unit
    record = escalate_units(report, lambda _f: _metrics(0.5, 5.0, 0.5), alone, 400, {})
    # never holds: the cheapest unit stays INT8 (all float would be the FP32 graph)
    assert record["added"] == ["u3", "u2"] and record["passes"] is False
    record = escalate_units(report, lambda _f: _metrics(0.5, 5.0, 0.5), alone, 400, {})
    assert record["added"] == [] and record["steps"] == [] and len(report.escalations) == 3
    assert [u for u in report.units if u not in report.float_units] == ["u1"]


def test_report_json__no_escalation_key_unless_escalated() -> None:
    report = _report()
    assert "escalations" not in report.to_json()  # the graph metadata of a first-try pass is unchanged


@contextmanager
def _quiet(_label: str, _total: int) -> Iterator[Any]:
    yield lambda *_args: None


def _job(models_dir: Path, out: Path) -> pipeline.ConvertJob:
    return pipeline.ConvertJob(
        model=model_file(models_dir, "b6c96"),
        target="onnx",
        precision="int8",
        output=out,
        calibration_positions=16,
        verify_positions=40,
        threads=1,
        board=9,
    )


def test_run_conversion__refused_int8_graph_escalates_and_is_verified_on_fresh_positions(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.models.sensitivity import Int8Pass

    # first, the default path: passes at once, no escalation, no attempts
    def no_escalation(*_a: Any, **_k: Any) -> bool:
        raise AssertionError("escalated a graph verification passed")

    with monkeypatch.context() as m:
        m.setattr(Int8Pass, "escalate", no_escalation)
        report, written = pipeline.run_conversion(_job(models_dir, tmp_path / "a.onnx"), _quiet)
    assert written is not None and report.passed and report.attempts == []
    first = read_manifest(written)
    assert first is not None and first.verification is not None
    assert "attempts" not in first.verification
    first_entry = first.extra["int8_sensitivity"]
    assert "escalations" not in first_entry
    assert first.extra["int8_float_groups"] == first_entry["float_units"]

    # then a verification that refuses its first samples (top-1 >= 1.01 cannot hold)
    real = pipeline.verify_with_progress
    samples: list[tuple[str, ...]] = []

    def verify_once_impossible(*args: Any, **kwargs: Any) -> VerifyReport:
        samples.append(tuple(args[2].ids))
        if len(samples) <= ESCALATIONS:  # refused until the last escalation
            kwargs["thresholds"] = {**kwargs["thresholds"], "policy_top1_agreement": (">=", 1.01)}
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "verify_with_progress", verify_once_impossible)
    report, written = pipeline.run_conversion(_job(models_dir, tmp_path / "b.onnx"), _quiet)
    assert written is not None and report.passed, report.summary()
    assert len(samples) == 1 + ESCALATIONS and len(report.attempts) == ESCALATIONS == 2
    attempt = report.attempts[0]
    (failure,) = attempt["failures"]
    assert failure.startswith("policy_top1_agreement = ") and failure.endswith("needs >= 1.01")
    assert attempt["float_units"] == len(first_entry["float_units"])  # the first try: the pass's graph
    assert report.attempts[1]["float_units"] > attempt["float_units"]
    # every verification sample is fresh: no position of one is in another (self-play seeds 1001, 1101, 1201)
    assert [s[0].split("-")[1] for s in samples] == ["1001", "1101", "1201"]
    assert len(set().union(*samples)) == sum(len(s) for s in samples)
    manifest = read_manifest(written)
    assert manifest is not None and manifest.verification is not None
    assert manifest.verification["attempts"] == report.attempts and manifest.verification["passed"]
    entry = manifest.extra["int8_sensitivity"]
    assert len(entry["escalations"]) == len(report.attempts)
    # each escalation chooses on the held-out 40 and the refused sample of 40, adding at least one unit
    assert [e["positions"] for e in entry["escalations"]] == [80, 80]
    assert all(e["added"] for e in entry["escalations"])
    assert entry["float_units"][: len(first_entry["float_units"])] == first_entry["float_units"]
    assert entry["float_units"][len(first_entry["float_units"]) :] == [
        u for e in entry["escalations"] for u in e["added"]
    ]
    assert manifest.extra["int8_float_groups"] == entry["float_units"]
    assert "escalation_s" in manifest.extra["timings"]
    assert "attempt 1 (refused): 40 positions" in report.summary()
    assert VerifyReport.from_json(manifest.verification).attempts == report.attempts
