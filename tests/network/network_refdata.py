"""Helpers for comparing our outputs with KataGo's recorded ``kata-raw-nn`` outputs.

The judge is ``../shared/reference`` (README there): ``inputs-v7.npz`` holds the V7 input tensors
(symmetry 0, 19x19 buffer) and ``rawnn-<net>.jsonl`` KataGo v1.17.2 Eigen's outputs for the same
99 positions. Tolerances are the README's §5.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from edge_fixtures import row_context

from agent.backends.base import NeuralNet, NNInputs
from agent.backends.numpy.runtime import set_blas_threads
from agent.network.model import PostProcessParams
from agent.network.postprocess import postprocess_row


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy with one OpenBLAS thread, restored afterwards (tests/network/conftest.py says why)."""
    changed = set_blas_threads(1)
    yield
    if changed:
        set_blas_threads(os.cpu_count() or 1)


REFERENCE_FILES = {
    "b6c96": "rawnn-g170-b6c96.jsonl",
    "b7c96-cnorm": "rawnn-b7c96h3tfrs-test5-cnorm.jsonl",
    "b7c96-gqa": "rawnn-b7c96h6kv3qk32v16tflrs.jsonl",
    "b10c384": "rawnn-b10c384.jsonl",
}
SCALARS = ("whiteWin", "whiteLoss", "noResult", "whiteLead", "whiteScoreSelfplay", "varTimeLeft",
           "shorttermWinlossError", "shorttermScoreError")  # fmt: skip
TOLERANCE = {
    "policy": 1e-4,
    "whiteWin": 1e-4,
    "whiteLoss": 1e-4,
    "noResult": 1e-4,
    "whiteLead": 0.01,
    "whiteScoreSelfplay": 0.01,
    "varTimeLeft": 0.01,
    "shorttermWinlossError": 0.01,
    "shorttermScoreError": 0.01,
    "whiteOwnership": 1e-3,
}


@dataclass
class Reference:
    records: list[dict[str, Any]]
    spatial: np.ndarray
    global_: np.ndarray


def load_reference(reference_dir: Path, key: str) -> Reference:
    inputs = np.load(reference_dir / "inputs-v7.npz")
    with (reference_dir / REFERENCE_FILES[key]).open() as fh:
        records = [json.loads(line) for line in fh]
    assert [r["id"] for r in records] == list(inputs["ids"])
    return Reference(records, inputs["spatial"], inputs["global"])


@dataclass
class Errors:
    """Largest |ours - KataGo| per field over the compared positions."""

    worst: dict[str, float] = field(default_factory=dict)
    mask_mismatches: list[str] = field(default_factory=list)
    positions: int = 0

    def add(self, name: str, value: float) -> None:
        self.worst[name] = max(self.worst.get(name, 0.0), value)

    def violations(self) -> list[str]:
        out = [
            f"{k}: {v:.3g} > {TOLERANCE[k]}"
            for k, v in self.worst.items()
            if k in TOLERANCE and v > TOLERANCE[k]
        ]
        if self.worst.get("whiteScoreSelfplaySq_rel", 0.0) > 1e-4:
            out.append(f"whiteScoreSelfplaySq relative {self.worst['whiteScoreSelfplaySq_rel']:.3g} > 1e-4")
        return out + [f"illegal-move mask differs at {pid}" for pid in self.mask_mismatches]


def compare(
    net: NeuralNet, params: PostProcessParams, ref: Reference, indices: list[int], batch: int = 8
) -> Errors:
    """Evaluate ``indices`` with ``net`` and compare every kata-raw-nn field with the recording."""
    errors = Errors()
    for start in range(0, len(indices), batch):
        chunk = indices[start : start + batch]
        raw = net.evaluate(NNInputs(ref.spatial[chunk], ref.global_[chunk]))
        for row, idx in enumerate(chunk):
            rec = ref.records[idx]
            ctx = row_context(rec, ref.spatial[idx], ref.global_[idx])
            for optimism, expected in (
                (rec["rawnn_policy_optimism"], rec["rawnn"]),
                (0.0, rec["rawnn_optimism0"]),
            ):
                got = postprocess_row(raw, row, params, ctx, policy_optimism=optimism).to_rawnn()
                compare_fields(got, expected, rec["id"], errors, policy_only=optimism == 0.0)
            errors.positions += 1
    return errors


def compare_fields(
    got: dict[str, Any], expected: dict[str, Any], pid: str, errors: Errors, policy_only: bool
) -> None:
    if [p is None for p in got["policy"]] != [p is None for p in expected["policy"]]:
        errors.mask_mismatches.append(pid)
    diffs = [
        abs(a - b)
        for a, b in zip(got["policy"], expected["policy"], strict=True)
        if a is not None and b is not None
    ]
    errors.add("policy", max([*diffs, abs(got["policyPass"] - expected["policyPass"])]))
    if policy_only:
        return
    for name in SCALARS:
        errors.add(name, abs(got[name] - expected[name]))
    sq_got, sq_exp = got["whiteScoreSelfplaySq"], expected["whiteScoreSelfplaySq"]
    errors.add("whiteScoreSelfplaySq", abs(sq_got - sq_exp))
    errors.add("whiteScoreSelfplaySq_rel", max(abs(sq_got - sq_exp) - 0.01, 0.0) / max(abs(sq_exp), 1.0))
    own = np.abs(np.asarray(got["whiteOwnership"]) - np.asarray(expected["whiteOwnership"]))
    errors.add("whiteOwnership", float(own.max()))
