"""Which network serves: the first runtime entry that can, with every fallback and its reason.

A device's profile (or the config, or ``analysis --runtime``) names runtime entries in order of
preference. :func:`open_network` tries them in order through the model store: a runtime whose
package is missing, a provider onnxruntime lacks, a conversion that verification refuses, a file
that will not load -- each is a *fallback* with its reason, logged as a warning and kept in the
:class:`NetworkReport` that health, ``katago-edge status``, ``detect`` and the fleet table show::

    {"requested": {"runtime": "tflite", "precision": "int8", "provider": null},
     "serving":   {"runtime": "onnx", "precision": "fp32", "provider": null, "file": "...",
                   "sha256": "...", "verify": {"status": "passed", "positions": 200, "failures": []}},
     "fallbacks": [{"runtime": "tflite", "precision": "int8", "provider": null,
                    "reason": "tflite/int8 refused by verification: lead_abs_error.p99 1.45 >= 1.0"}]}

An entry marked ``required`` does not fall back: its failure ends the start-up with that reason.
A converted file given directly (``.onnx``, ``.tflite``, ``.engine``) is served as it is, by the
runtime its suffix names.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.backends.base import NeuralNet
from agent.backends.registry import runtime_for_file
from agent.errors import AgentError, RuntimeUnavailable
from agent.models.manifest import read_manifest
from agent.models.store import Artifact, ModelStore, Recipe, check_runtime
from agent.progress import NO_PROGRESS, ProgressFactory

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeEntry:
    """One line of a runtime preference list."""

    runtime: str
    precision: str = "fp32"
    provider: str | None = None
    required: bool = False

    @property
    def label(self) -> str:
        via = f" via {self.provider}" if self.provider else ""
        precision = f"/{self.precision}" if self.precision else ""
        return f"{self.runtime}{precision}{via}"

    def to_json(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "precision": self.precision or None, "provider": self.provider}


@dataclass
class NetworkReport:
    """What was asked for, what serves, and why anything in between did not."""

    requested: RuntimeEntry
    serving: dict[str, Any] = field(default_factory=dict)
    fallbacks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fell_back(self) -> bool:
        return bool(self.fallbacks)

    def to_json(self) -> dict[str, Any]:
        return {
            "requested": self.requested.to_json(),
            "serving": dict(self.serving),
            "fallbacks": [dict(f) for f in self.fallbacks],
        }

    def summary(self) -> str:
        s = self.serving
        via = f" via {s['provider']}" if s.get("provider") else ""
        precision = f"/{s['precision']}" if s.get("precision") else ""
        text = f"{s.get('runtime')}{precision}{via} ({Path(str(s.get('file', '?'))).name})"
        if self.fallbacks:
            text += f"; FALLBACK from {self.requested.label}: " + "; ".join(
                f"{f['runtime']}/{f['precision']}: {f['reason']}" for f in self.fallbacks
            )
        return text


def serving_info(artifact: Artifact) -> dict[str, Any]:
    return {
        "runtime": artifact.runtime,
        "precision": artifact.precision,
        "provider": artifact.provider,
        "file": str(artifact.path),
        "sha256": artifact.sha256,
        "verify": artifact.verify,
        "built_now": artifact.built_now,
    }


def given_file_artifact(path: Path, store: ModelStore) -> Artifact:
    """A converted file given directly, as an artifact: runtime from its suffix, the rest from
    the manifest beside it (if any)."""
    runtime = runtime_for_file(path)
    if runtime is None:
        raise RuntimeUnavailable(f"{path}: not a converted network file (.onnx, .tflite, .engine, .plan)")
    manifest = read_manifest(path)
    precision = manifest.precision if manifest else "fp32"
    sha256 = manifest.sha256 if manifest and manifest.sha256 else store.source_sha256(path)
    return Artifact(path, runtime, precision, None, sha256, manifest)


def open_network(
    source: Path,
    entries: tuple[RuntimeEntry, ...] | list[RuntimeEntry],
    store: ModelStore,
    *,
    threads: int = 0,
    progress: ProgressFactory = NO_PROGRESS,
    thresholds: Mapping[str, tuple[tuple[str, str, float], ...]] | None = None,
) -> tuple[NeuralNet, NetworkReport]:
    """Load ``source`` with the first entry that can serve it (module docstring). ``thresholds``
    overrides verification limits per precision (a profile's ``[verify.<precision>]``)."""
    if runtime_for_file(source) is not None:
        artifact = given_file_artifact(source, store)
        entry = RuntimeEntry(artifact.runtime, artifact.precision)
        check_runtime(entry.runtime)
        net = store.open(artifact, threads=threads)
        return net, NetworkReport(entry, serving_info(artifact))
    if not entries:
        raise RuntimeUnavailable("no runtime entry to serve the network with")
    report = NetworkReport(entries[0])
    for entry in entries:
        try:
            check_runtime(entry.runtime, entry.provider)
            artifact = store.prepare(
                source,
                Recipe(
                    entry.runtime,
                    entry.precision,
                    entry.provider,
                    thresholds=(thresholds or {}).get(entry.precision.split("-")[0], ()),
                ),
                progress=progress,
                threads=threads,
            )
            net = store.open(artifact, threads=threads)
        except AgentError as exc:
            if entry.required:
                raise RuntimeUnavailable(
                    f"runtime {entry.label} is marked required and cannot serve: {exc}"
                ) from exc
            report.fallbacks.append({**entry.to_json(), "reason": str(exc)})
            logger.warning("runtime %s cannot serve (%s); trying the next entry", entry.label, exc)
            continue
        report.serving = serving_info(artifact)
        if report.fallbacks:
            logger.warning("serving with a FALLBACK: %s", report.summary())
        else:
            logger.info("serving %s", report.summary())
        return net, report
    raise RuntimeUnavailable(
        "no runtime could serve the network: "
        + "; ".join(f"{f['runtime']}/{f['precision']}: {f['reason']}" for f in report.fallbacks)
    )
