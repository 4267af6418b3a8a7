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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def apply_suggestion(config_path: Path, suggestion: Suggestion) -> Path:
    """Write the suggestion as the config's ``[overrides]``: runtime and precision, the network
    runtime's CPU threads the figure was measured with (``search.runtime_threads``: the bench times
    the network alone, so it says nothing of search threads, which keep the profile's value) and
    the batch size.

    Other tables and comments are kept: only ``[overrides*]`` tables are replaced. The result is
    validated as TOML before it atomically replaces the file.
    """
    text = config_path.read_text() if config_path.is_file() else ""
    kept: list[str] = []
    skipping = False
    for line in text.splitlines():
        if _TABLE_HEADER.match(line):
            skipping = line.strip().lstrip("[").startswith("overrides")
        if not skipping:
            kept.append(line)
    block = [
        "",
        "# written by `katago-edge bench --apply`",
        "[overrides]",
        f'runtimes = [{{ runtime = "{suggestion.runtime}", precision = "{suggestion.precision}" }}]',
        "",
        "[overrides.search]",
        f"runtime_threads = {suggestion.threads}",
        f"batch_size = {suggestion.batch_size}",
        "",
    ]
    new_text = "\n".join(kept).rstrip("\n") + "\n" + "\n".join(block)
    try:
        tomllib.loads(new_text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{config_path}: cannot apply the suggestion, the file is not valid TOML: {exc}"
        ) from exc
    return atomic_write_text(config_path, new_text.lstrip("\n"))


def ratio(ours: float, theirs: float | None) -> float | None:
    return round(ours / theirs, 3) if theirs else None
