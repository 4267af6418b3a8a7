"""Shared helpers for the ONNX tests: KataGo's recorded outputs and how far we are from them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from agent.backends.base import NNOutputs
from agent.network.model import PostProcessParams
from agent.network.postprocess import RowContext, legal_mask_from_features, postprocess_row

RAWNN = {
    "b6c96": "rawnn-g170-b6c96.jsonl",
    "b7c96-cnorm": "rawnn-b7c96h3tfrs-test5-cnorm.jsonl",
    "b7c96-gqa": "rawnn-b7c96h6kv3qk32v16tflrs.jsonl",
    "b10c384": "rawnn-b10c384.jsonl",
}
# ../shared/reference/README.md §5
TOLERANCE = {"policy": 1e-4, "win": 1e-4, "no_result": 1e-4, "lead": 0.01, "score": 0.01, "ownership": 1e-3}


def load_reference(reference_dir: Path, key: str) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    records = [json.loads(line) for line in (reference_dir / RAWNN[key]).read_text().splitlines()]
    data = np.load(reference_dir / "inputs-v7.npz")
    assert list(data["ids"]) == [r["id"] for r in records]
    return records, data["spatial"].astype(np.float32), data["global"].astype(np.float32)


def worst_errors(
    raw: NNOutputs,
    params: PostProcessParams,
    records: list[dict[str, Any]],
    spatial: np.ndarray,
    global_: np.ndarray,
) -> dict[str, float]:
    """Largest |ours - KataGo| per field over the rows of ``raw`` (row i = records[i]); masks must match."""
    worst = dict.fromkeys(TOLERANCE, 0.0)
    hb, wb = spatial.shape[2], spatial.shape[3]
    for i, rec in enumerate(records):
        bx, by = rec["board_x_size"], rec["board_y_size"]
        rules = rec["kata_rules"]
        legal = legal_mask_from_features(spatial[i], global_[i], bx, by)
        ctx = RowContext(
            board_x=bx,
            board_y=by,
            white_to_move=rec["next_player"] == "W",
            legal=legal,
            no_result_impossible=rules["ko"] != "SIMPLE" and rules["scoring"] == "AREA",
            buffer_x=wb,
            buffer_y=hb,
        )
        ev = postprocess_row(raw, i, params, ctx, policy_optimism=rec["rawnn_policy_optimism"])
        ref = rec["rawnn"]
        ref_legal = np.array([p is not None for p in ref["policy"]] + [True])
        assert np.array_equal(ref_legal, ev.legal), f"{rec['id']}: illegal-move mask differs"
        ref_policy = np.array([p if p is not None else 0.0 for p in ref["policy"]] + [ref["policyPass"]])
        worst["policy"] = max(worst["policy"], float(np.max(np.abs(ev.policy - ref_policy))))
        worst["win"] = max(
            worst["win"], abs(ev.white_win - ref["whiteWin"]), abs(ev.white_loss - ref["whiteLoss"])
        )
        worst["no_result"] = max(worst["no_result"], abs(ev.no_result - ref["noResult"]))
        worst["lead"] = max(worst["lead"], abs(ev.white_lead - ref["whiteLead"]))
        worst["score"] = max(worst["score"], abs(ev.white_score_mean - ref["whiteScoreSelfplay"]))
        own = np.asarray(ref["whiteOwnership"])
        worst["ownership"] = max(worst["ownership"], float(np.max(np.abs(ev.white_ownership - own))))
    return worst


def assert_within_tolerance(worst: dict[str, float]) -> None:
    bad = {k: v for k, v in worst.items() if v > TOLERANCE[k]}
    assert not bad, f"outside KataGo tolerances {TOLERANCE}: {bad}"
