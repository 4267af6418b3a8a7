"""A benchmark result row as `katago-edge bench` writes it (the fields the suggestion and the INT8
comparison read), for tests of their arithmetic."""

from __future__ import annotations

from typing import Any


def row(runtime: str, precision: str, batch: int, eps: float, threads: int = 1) -> dict[str, Any]:
    return {
        "runtime": runtime,
        "precision": precision,
        "batch": batch,
        "threads": threads,
        "evals_per_s": eps,
    }
