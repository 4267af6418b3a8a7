"""Timing statistics: warm-up, repetitions, median and spread.

Absolute times on shared machines drift, so every figure is the median of several repetitions
with its spread (p05..p95 and the relative IQR), never a single run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``reps`` timed calls (after ``warmup`` untimed ones)."""

    reps: int
    median_s: float
    p05_s: float
    p95_s: float
    min_s: float
    max_s: float

    @property
    def spread(self) -> float:
        """(p95 - p05) / median: 0.05 means the runs agree within about 5%."""
        return (self.p95_s - self.p05_s) / self.median_s if self.median_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spread"] = round(self.spread, 4)
        return d


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(samples: list[float]) -> Timing:
    if not samples:
        raise ValueError("no samples to summarize")
    return Timing(
        reps=len(samples),
        median_s=statistics.median(samples),
        p05_s=percentile(samples, 5),
        p95_s=percentile(samples, 95),
        min_s=min(samples),
        max_s=max(samples),
    )


def measure(
    func: Callable[[], object],
    *,
    warmup: int = 2,
    reps: int = 10,
    min_seconds: float = 0.0,
    max_seconds: float = 60.0,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Time ``func``: ``warmup`` untimed calls, then at least ``reps`` timed ones.

    Keeps repeating until ``min_seconds`` of timed work has been collected, and stops early (with
    at least 3 samples) once ``max_seconds`` has passed, so slow networks on slow devices finish.
    """
    for _ in range(warmup):
        func()
    samples: list[float] = []
    started = clock()
    while True:
        t0 = clock()
        func()
        samples.append(clock() - t0)
        elapsed = clock() - started
        enough = len(samples) >= reps and elapsed >= min_seconds
        if enough or (elapsed >= max_seconds and len(samples) >= 3):
            break
    return summarize(samples)
