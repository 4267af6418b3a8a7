"""Network evaluation benchmark: evals/s and latency per runtime x precision x batch x threads.

A *variant* is one runnable form of the network: ``numpy/fp32`` (the reference, straight from the
``.bin.gz``), ``onnx/fp32|fp16|int8``, ``tflite/fp32|fp16|int8`` and ``tensorrt/fp16|int8`` where
those runtimes exist. Converted files are looked up in (or written to) a cache folder; a variant
that cannot be prepared on this device (no TensorFlow to build TFLite, no GPU for TensorRT) is
reported as skipped with the reason, never silently dropped.
"""

from __future__ import annotations

import functools
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.backends.base import NNOutputs
from agent.bench.positions import BenchPosition, encode_batch
from agent.bench.timing import Timing, measure
from agent.errors import AgentError
from agent.models.manifest import manifest_path
from agent.models.store import Artifact, ModelStore, Recipe, check_runtime
from agent.records import field_dict

logger = logging.getLogger(__name__)

ALL_VARIANTS = (
    ("numpy", "fp32"),
    ("onnx", "fp32"),
    ("onnx", "fp16"),
    ("onnx", "int8"),
    ("tflite", "fp32"),
    ("tflite", "fp16"),
    ("tflite", "int8"),
    ("tensorrt", "fp16"),
    ("tensorrt", "int8"),
)
# The option each runtime class takes for its CPU thread count.
THREAD_OPTION = {"onnx": "intra_op_threads", "tflite": "threads"}


@dataclass
class NNResult:
    runtime: str
    precision: str
    batch: int
    threads: int
    evals_per_s: float
    latency: Timing
    load_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            **field_dict(self, rounded={"evals_per_s": 3, "load_s": 3}),
            "latency_ms_p50": round(self.latency.median_s * 1e3, 3),
            "latency_ms_p95": round(self.latency.p95_s * 1e3, 3),
        }


@dataclass(frozen=True)
class Accuracy:
    """A quick agreement check of a variant with the fp32 reference on the benchmark positions.

    Not the full verification (``katago-edge verify`` uses 200+ positions); enough to keep a
    broken or badly quantized variant out of the suggestion. Thresholds are the verification
    defaults for the precision.
    """

    positions: int
    winrate_abs_error_max: float
    policy_top1_agreement: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return field_dict(self, rounded={"winrate_abs_error_max": 5, "policy_top1_agreement": 4})


# (max win-rate error, min top-1 agreement) per precision; fp32 differs by float rounding only.
QUICK_THRESHOLDS = {"fp32": (1e-3, 0.99), "fp16": (0.01, 0.95), "int8": (0.03, 0.85)}


def _winrate(value: np.ndarray) -> np.ndarray:
    v = value.astype(np.float64)
    e = np.exp(v - v.max(axis=1, keepdims=True))
    return np.asarray(e[:, 0] / e.sum(axis=1))


def accuracy(got: NNOutputs, ref: NNOutputs, precision: str) -> Accuracy:
    win_err = float(np.abs(_winrate(got.value) - _winrate(ref.value)).max())
    top1 = float((got.policy[:, 0].argmax(axis=1) == ref.policy[:, 0].argmax(axis=1)).mean())
    max_err, min_top1 = QUICK_THRESHOLDS.get(precision.split("-")[0], (0.03, 0.85))
    return Accuracy(got.batch_size, win_err, top1, win_err <= max_err and top1 >= min_top1)


@dataclass
class NNBench:
    results: list[NNResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    prepare_s: dict[str, float] = field(default_factory=dict)
    accuracy: dict[str, Accuracy] = field(default_factory=dict)
    artifacts: dict[str, Artifact] = field(default_factory=dict)

    def verified(self) -> dict[str, bool]:
        """Per variant: the model store's verification passed (what ``serve`` would serve).
        The quick check on the bench positions (``accuracy``) is reported beside it, not used."""
        return {k: a.verify["status"] in ("passed", "reference") for k, a in self.artifacts.items()}

    def verify_statuses(self) -> dict[str, str]:
        """Per variant: the model store's verification status (passed, reference, forced, failed,
        unverified), for the report to say why a variant does not count."""
        return {k: str(a.verify["status"]) for k, a in self.artifacts.items()}

    def manifests(self) -> dict[str, tuple[dict[str, Any] | None, str | None]]:
        """Per variant: its manifest's ``extra`` keys (what an INT8 conversion kept in float and
        the sensitivity pass's figures) and the manifest's path; ``(None, None)`` without one."""
        out: dict[str, tuple[dict[str, Any] | None, str | None]] = {}
        for label, artifact in self.artifacts.items():
            if artifact.manifest is None:
                out[label] = (None, None)
            else:
                out[label] = (artifact.manifest.extra, str(manifest_path(artifact.path)))
        return out

    def best(self, batch: int | None = None) -> NNResult | None:
        pool = [r for r in self.results if batch is None or r.batch == batch]
        return max(pool, key=lambda r: r.evals_per_s, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": [r.to_dict() for r in self.results],
            "skipped": dict(self.skipped),
            "prepare_s": {k: round(v, 2) for k, v in self.prepare_s.items()},
            "accuracy": {k: a.to_dict() for k, a in self.accuracy.items()},
            "verified": self.verified(),
        }


def prepare_variant(source: Path, runtime: str, precision: str, store: ModelStore) -> Artifact:
    """The artifact to load for a variant, from the model store (built and verified once).

    A variant the store refuses (verification failed, now or before) raises ``VerificationFailed``
    and is reported as skipped with that reason: the bench measures only what ``serve`` would serve.
    """
    if runtime == "numpy" and precision != "fp32":
        raise AgentError("the numpy reference runs in fp32 only")
    check_runtime(runtime)
    return store.prepare(source, Recipe(runtime, precision))


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_nn_bench(
    source: Path,
    positions: list[BenchPosition],
    *,
    variants: list[tuple[str, str]],
    batches: list[int],
    threads: list[int],
    store: ModelStore,
    reps: int = 10,
    max_seconds: float = 20.0,
    progress: Callable[[str], None] | None = None,
) -> NNBench:
    """Measure every variant x batch x threads; variants that cannot run are recorded as skipped."""
    bench = NNBench()
    inputs = {b: encode_batch(positions, b) for b in batches}
    check = encode_batch(positions, len(positions))
    reference: NNOutputs | None = None
    for runtime, precision in variants:
        label = f"{runtime}/{precision}"
        try:
            t0 = time.perf_counter()
            artifact = prepare_variant(source, runtime, precision, store)
            bench.prepare_s[label] = time.perf_counter() - t0
            bench.artifacts[label] = artifact
        except (AgentError, ImportError) as exc:
            bench.skipped[label] = str(exc)
            logger.info("skipping %s: %s", label, exc)
            continue
        thread_list = threads if runtime in THREAD_OPTION else [0]
        for nthreads in thread_list:
            try:
                t0 = time.perf_counter()
                net = store.open(artifact, threads=nthreads)
                load_s = time.perf_counter() - t0
            except (AgentError, ImportError) as exc:
                bench.skipped[label] = str(exc)
                break
            if label not in bench.accuracy:
                out = net.evaluate(check)
                if reference is None:
                    reference = out  # the first variant (numpy or onnx fp32) is the reference
                bench.accuracy[label] = accuracy(out, reference, precision)
            for b in batches:
                if progress:
                    progress(f"{label} batch {b} threads {nthreads or 'default'}")
                batch = inputs[b]
                timing = measure(
                    functools.partial(net.evaluate, batch), warmup=2, reps=reps, max_seconds=max_seconds
                )
                bench.results.append(
                    NNResult(runtime, precision, b, nthreads, b / timing.median_s, timing, load_s)
                )
            net.close()
    return bench
