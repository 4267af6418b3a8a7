"""Benchmark report: the machine, every figure, a suggestion, a table, and ``--apply``.

The JSON written by ``katago-edge bench --json`` carries the machine's description with every
figure (CPU model, cores, features, RAM, OS, runtime versions), because a figure without its
machine means nothing. The suggestion picks the fastest runtime/precision whose verification
passed (a converted network that failed its accuracy thresholds is never suggested).
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.app.config import toml_table
from agent.errors import AgentError, ConfigError
from agent.fsutil import atomic_write_text
from agent.records import field_dict

RUNTIME_PACKAGES = (
    "numpy",
    "onnxruntime",
    "onnx",
    "ai-edge-litert",
    "tflite-runtime",
    "tensorflow-cpu",
    "tensorrt",
)


def machine_description() -> dict[str, Any]:
    """CPU model, cores, features, RAM, OS and runtime versions of this machine."""
    from agent.hardware.cpu import probe_cpu
    from agent.hardware.memory import probe_memory

    root = Path("/")
    desc: dict[str, Any] = {
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    try:  # a probe failure is recorded, it must not lose the benchmark
        cpu = probe_cpu(root)
        desc["cpu_model"] = cpu.model
        desc["cores"] = cpu.cores
        desc["cpu_features"] = sorted(cpu.features)
    except (OSError, ValueError, AgentError) as exc:
        desc["cpu_error"] = str(exc)
    try:
        memory = probe_memory(root)
        desc["memory_mb"] = memory.total_mb if memory else None
    except (OSError, ValueError, AgentError) as exc:
        desc["memory_error"] = str(exc)
    versions = {}
    for pkg in RUNTIME_PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    desc["versions"] = versions
    return desc


@dataclass
class Suggestion:
    runtime: str
    precision: str
    threads: int
    batch_size: int
    evals_per_s: float
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return field_dict(self, rounded={"evals_per_s": 3})


PRECISION_PREFERENCE = ("fp32", "fp16", "int8")  # among figures within the margin: the most exact
SUGGEST_MARGIN = 0.05  # at least; each figure's own spread widens it


def suggest(nn_results: list[dict[str, Any]], verify: dict[str, bool], cores: int) -> Suggestion | None:
    """The variant to serve with: only variants whose conversion passed the model store's
    verification (``verify`` maps ``"runtime/precision"`` to that; a variant missing there is not
    verified, fp32 included), fastest first but **stable**: every verified figure within the
    margin of the fastest (5 %, or the fastest figure's own run-to-run spread when larger) counts
    as a tie, and ties go to the most exact precision, then the runtime listed first, then fewer
    threads, so two runs on a noisy machine pick the same variant. Batch: the smallest within
    10 % of the chosen variant's best."""
    allowed = [r for r in nn_results if verify.get(f"{r['runtime']}/{r['precision']}", False)]
    if not allowed:
        return None
    fastest = max(allowed, key=lambda r: r["evals_per_s"])
    margin = max(SUGGEST_MARGIN, float(fastest.get("latency", {}).get("spread", 0.0)))
    runtimes = list(dict.fromkeys(r["runtime"] for r in nn_results))

    def preference(r: dict[str, Any]) -> tuple[int, int, int]:
        p = r["precision"]
        rank = PRECISION_PREFERENCE.index(p) if p in PRECISION_PREFERENCE else len(PRECISION_PREFERENCE)
        return rank, runtimes.index(r["runtime"]), r["threads"] or cores

    ties = [r for r in allowed if r["evals_per_s"] >= (1.0 - margin) * fastest["evals_per_s"]]
    pick = min(ties, key=preference)
    same = [
        r
        for r in allowed
        if (r["runtime"], r["precision"], r["threads"])
        == (pick["runtime"], pick["precision"], pick["threads"])
    ]
    top = max(same, key=lambda r: r["evals_per_s"])
    batch = min((r for r in same if r["evals_per_s"] >= 0.9 * top["evals_per_s"]), key=lambda r: r["batch"])
    reasons = [
        f"{top['runtime']}/{top['precision']}: {top['evals_per_s']:.1f} evals/s at batch {top['batch']}"
        + (
            f", within {margin:.0%} of the fastest ({fastest['runtime']}/{fastest['precision']} "
            f"{fastest['evals_per_s']:.1f}) and preferred"
            if top is not fastest
            else " (fastest)"
        )
    ]
    skipped = sorted(
        {f"{r['runtime']}/{r['precision']}" for r in nn_results}
        - {f"{r['runtime']}/{r['precision']}" for r in allowed}
    )
    if skipped:
        reasons.append("not considered (verification missing or failed): " + ", ".join(skipped))
    if batch["batch"] != top["batch"]:
        reasons.append(f"batch {batch['batch']} is within 10% of batch {top['batch']} with lower latency")
    threads = top["threads"] or cores
    return Suggestion(top["runtime"], top["precision"], threads, batch["batch"], top["evals_per_s"], reasons)


_TABLE_HEADER = re.compile(r"^\s*\[")


def apply_suggestion(
    config_path: Path, suggestion: Suggestion, fallbacks: Sequence[Mapping[str, Any]] = ()
) -> Path:
    """Write the suggestion into the config's ``[overrides]``: its runtime and precision first in
    ``runtimes``, then ``fallbacks`` (the runtime list the device had: the profile's, or an earlier
    ``--apply``'s), so a variant that cannot serve later still falls back; the network runtime's
    CPU threads the figure was measured with (``search.runtime_threads``: the bench times the
    network alone, so it says nothing of search threads, which keep the profile's value) and the
    batch size.

    Other overrides (thermal limits, search visits, ...), other tables and comments are kept; the
    ``[overrides*]`` tables are written anew at the end. The result is validated as TOML before
    it atomically replaces the file.
    """
    text = config_path.read_text() if config_path.is_file() else ""
    try:
        overrides = dict(tomllib.loads(text).get("overrides", {}))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{config_path}: cannot apply the suggestion, the file is not valid TOML: {exc}"
        ) from exc
    kept: list[str] = []
    skipping = False
    for line in text.splitlines():
        if _TABLE_HEADER.match(line):
            skipping = line.strip().lstrip("[").startswith("overrides")
        if not skipping:
            kept.append(line)
    chosen = {"runtime": suggestion.runtime, "precision": suggestion.precision}
    rest = [
        {k: v for k, v in f.items() if v is not None}
        for f in fallbacks
        if (f.get("runtime"), f.get("precision"), f.get("provider"))
        != (suggestion.runtime, suggestion.precision, None)
    ]
    overrides["runtimes"] = [chosen, *rest]
    overrides["search"] = {
        **overrides.get("search", {}),
        "runtime_threads": suggestion.threads,
        "batch_size": suggestion.batch_size,
    }
    plain = {k: v for k, v in overrides.items() if not isinstance(v, dict)}
    tables = [toml_table(f"overrides.{k}", v) for k, v in overrides.items() if isinstance(v, dict)]
    block = ["", "# written by `katago-edge bench --apply`", toml_table("overrides", plain), "", *tables, ""]
    new_text = "\n".join(kept).rstrip("\n") + "\n" + "\n".join(block)
    tomllib.loads(new_text)  # what was read parsed: what is written does too
    return atomic_write_text(config_path, new_text.lstrip("\n"))


def ratio(ours: float, theirs: float | None) -> float | None:
    return round(ours / theirs, 3) if theirs else None


INT8_TARGET = 2.0  # issue #17: INT8 at least twice FP32's evals/s, with verification passed


def int8_float_record(extra: Mapping[str, Any] | None, manifest: str | None = None) -> dict[str, Any]:
    """What an INT8 artifact's manifest (its ``extra`` keys) records as kept in float, and what the
    sensitivity pass measured for each of those units: read, never inferred. A missing record is
    said as ``"no record"``.

    ``float_units`` / ``float_count`` / ``unit_count`` come from ``int8_sensitivity`` (the pass's
    units and the ones it kept float), else from ``int8_float_groups`` (a fixed list, no pass: no
    unit count and no costs). ``costs`` maps each float unit to the pass's figures with only that
    unit in INT8 (``cost``, ``winrate_p99``, ``lead_p99``, ``top1``, ``policy_kl_mean``), or says
    why there are none. ``float_always`` lists what the TFLite writer never quantizes
    (``tflite_int8``); no pass measures those."""
    if extra is None:
        return {"manifest": manifest, "float_units": "no record", "costs": "no record"}
    out: dict[str, Any] = {"manifest": manifest}
    tflite = extra.get("tflite_int8")
    mode = tflite.get("mode") if isinstance(tflite, dict) else extra.get("int8_mode")
    out["int8_mode"] = mode if mode is not None else "no record"
    sensitivity = extra.get("int8_sensitivity")
    groups = extra.get("int8_float_groups")
    if isinstance(sensitivity, dict):
        units = list(sensitivity.get("units", {}))
        float_units = [str(u) for u in sensitivity.get("float_units", [])]
        alone = sensitivity.get("alone", {})
        start = set(sensitivity.get("start", []))
        costs: dict[str, Any] = {}
        for unit in float_units:
            if unit in alone:
                costs[unit] = dict(alone[unit])
            elif unit in start:
                costs[unit] = "no record (float from the start list, not measured alone)"
            else:
                costs[unit] = "no record"
        out.update(
            source="int8_sensitivity",
            float_units=float_units,
            float_count=len(float_units),
            unit_count=len(units),
            costs=costs,
            all_int8=sensitivity.get("all_int8", "no record"),
            sensitivity_passed=sensitivity.get("passed"),
            positions=sensitivity.get("positions"),
        )
    elif isinstance(groups, list):
        out.update(
            source="int8_float_groups",
            float_units=[str(g) for g in groups],
            float_count=len(groups),
            unit_count="no record",
            costs={str(g): "no record" for g in groups},
        )
    else:
        out.update(float_units="no record", costs="no record")
    if isinstance(tflite, dict) and "float_always" in tflite:
        out["float_always"] = list(tflite["float_always"])
    return out


def int8_vs_fp32(
    nn_results: list[dict[str, Any]],
    verified: Mapping[str, bool],
    manifests: Mapping[str, tuple[Mapping[str, Any] | None, str | None]],
    *,
    skipped: Mapping[str, str] | None = None,
    statuses: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per runtime measured in both FP32 and INT8 at the same batch and threads: the best
    INT8/FP32 evals/s ratio over those pairs (and which pair), whether INT8 passed verification
    (a variant that did not is reported, marked, and never counted as reaching the target),
    whether it reaches :data:`INT8_TARGET`, and what the INT8 artifact's manifest records as kept
    in float (the table shows it when the target is not reached) (:func:`int8_float_record`; ``manifests`` maps ``"runtime/int8"`` to
    the manifest's ``extra`` and its path). A runtime whose INT8 variant was skipped (refused by
    verification, cannot be built) while FP32 ran gets the reason instead of a ratio.

    Ratios are computed from the figures as the report holds them (``evals_per_s`` of the result
    dicts), so anyone can recompute them from the JSON."""
    figures = {(r["runtime"], r["precision"], r["batch"], r["threads"]): r for r in nn_results}
    out: dict[str, dict[str, Any]] = {}
    for runtime in dict.fromkeys(r["runtime"] for r in nn_results):
        label, fp32_label = f"{runtime}/int8", f"{runtime}/fp32"
        pairs = []
        for (rt, precision, batch, threads), r in figures.items():
            fp32 = figures.get((rt, "fp32", batch, threads))
            if rt != runtime or precision != "int8" or fp32 is None or not fp32["evals_per_s"]:
                continue
            pairs.append(
                {
                    "batch": batch,
                    "threads": threads,
                    "int8_evals_per_s": r["evals_per_s"],
                    "fp32_evals_per_s": fp32["evals_per_s"],
                    "ratio": round(r["evals_per_s"] / fp32["evals_per_s"], 3),
                }
            )
        if not pairs:
            has_fp32 = any(k[0] == runtime and k[1] == "fp32" for k in figures)
            if has_fp32 and skipped and label in skipped:
                out[runtime] = {"ratio": None, "int8_skipped": skipped[label], "counted": False}
            continue
        best = max(pairs, key=lambda p: p["ratio"])
        int8_ok = bool(verified.get(label, False))
        fp32_ok = bool(verified.get(fp32_label, False))
        counted = int8_ok and fp32_ok
        record: dict[str, Any] = {
            **best,
            "pairs": pairs,
            "int8_verified": int8_ok,
            "int8_verify_status": (statuses or {}).get(label, "passed" if int8_ok else "not verified"),
            "fp32_verified": fp32_ok,
            "counted": counted,
            "target": INT8_TARGET,
            "reaches_target": counted and best["ratio"] >= INT8_TARGET,
        }
        extra, path = manifests.get(label, (None, None))
        record["float"] = int8_float_record(extra, path)  # printed only below the target
        out[runtime] = record
    return out


def _threads_text(threads: int) -> str:
    return "default threads" if not threads else f"{threads} thread{'s' if threads != 1 else ''}"


def _cost_text(unit: str, cost: Any) -> str:
    if not isinstance(cost, dict):
        return f"{unit}: {cost}"
    parts = [f"cost {cost['cost']:.3f}"] if "cost" in cost else []
    for key, name, fmt in (
        ("winrate_p99", "winrate p99", ".4f"),
        ("lead_p99", "lead p99", ".3f"),
        ("top1", "top-1", ".3f"),
    ):
        if key in cost:
            parts.append(f"{name} {cost[key]:{fmt}}")
    return f"{unit}: INT8 alone {', '.join(parts)}"


def int8_vs_fp32_lines(records: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The table's "INT8 vs FP32" lines, one per runtime, from :func:`int8_vs_fp32`'s records."""
    lines = []
    for runtime, rec in records.items():
        if rec.get("ratio") is None:
            lines.append(f"{runtime}: int8 not measured ({rec.get('int8_skipped', 'no figure')})")
            continue
        head = (
            f"{runtime}: int8 {rec['int8_evals_per_s']:.1f} / fp32 {rec['fp32_evals_per_s']:.1f} evals/s "
            f"= {rec['ratio']:.2f}x (batch {rec['batch']}, {_threads_text(rec['threads'])})"
        )
        if rec["counted"]:
            head += ", verified"
        elif not rec["int8_verified"]:
            head += f", INT8 NOT VERIFIED ({rec['int8_verify_status']}): not counted"
        else:
            head += ", FP32 not verified: not counted"
        if rec["reaches_target"]:
            lines.append(f"{head}, reaches {rec['target']:g}x")
            continue
        head += f", below {rec['target']:g}x" if rec["counted"] else ""
        lines.append(f"{head}: {_float_text(rec.get('float', {}))}")
    return lines


def _float_text(fl: Mapping[str, Any]) -> str:
    units = fl.get("float_units", "no record")
    if not isinstance(units, list):
        text = "float units: no record in the manifest"
    else:
        count = fl.get("unit_count")
        of = f" of {count}" if isinstance(count, int) else ""
        text = f"{fl.get('float_count')}{of} {'unit' if fl.get('float_count') == 1 and not of else 'units'} float"
        costs = fl.get("costs", {})
        if units and isinstance(costs, dict):
            text += " (" + "; ".join(_cost_text(u, costs.get(u, "no record")) for u in units) + ")"
        if fl.get("source") == "int8_sensitivity":
            every = fl.get("all_int8")
            if isinstance(every, dict):
                text += (
                    f"; every unit INT8: winrate p99 {every['winrate_p99']:.4f}, lead p99 "
                    f"{every['lead_p99']:.3f}, top-1 {every['top1']:.3f}"
                )
    if fl.get("float_always"):
        text += f"; always float in the TFLite writer (no cost record): {', '.join(fl['float_always'])}"
    return text + f"; int8 mode {fl.get('int8_mode', 'no record')}"
