"""The analysis root evaluation equals KataGo's recorded one (analysis-b10c384.jsonl).

KataGo's analysis engine evaluates the root without pre-root history, with conservative pass,
the pass-prior cap and policy optimism 0.2 (reference README §6). Those are exactly
reproducible, so ``policy`` and rootInfo ``rawWinrate`` / ``rawLead`` are compared with the
network tolerances, at 1 visit and at a few visits (the root evaluation must not depend on the
search). Search results themselves are only compared loosely by ``bench/search_quality``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edge_fixtures import model_file, open_model

from agent.engines.native import NativeEngine
from agent.protocol.service import AnalysisService
from agent.search.params import SearchParams

pytestmark = [pytest.mark.needs_models, pytest.mark.slow]


@pytest.fixture(scope="module")
def b10_engine(models_dir: Path, model_store: Any) -> Iterator[NativeEngine]:
    pytest.importorskip("onnxruntime")
    net = open_model(model_file(models_dir, "b10c384"), model_store)
    eng = NativeEngine(net, default_params=SearchParams(max_visits=1), randomize=False, seed=3)
    yield eng
    eng.close()


def _run(engine: NativeEngine, records: list[dict[str, Any]], visits: int) -> dict[str, dict[str, Any]]:
    svc = AnalysisService(engine)
    out: dict[str, dict[str, Any]] = {}

    def emit(r: dict[str, Any]) -> None:
        if r.get("isDuringSearch") is False:
            out[r["id"]] = r

    for rec in records:
        svc.handle_line(json.dumps({**rec["query_obj"], "maxVisits": visits}), emit)
    deadline = time.monotonic() + 600
    while len(out) < len(records) and time.monotonic() < deadline:
        time.sleep(0.05)
    return out


def test_reference_analysis__root_policy_and_raw_values_match_katago(
    b10_engine: NativeEngine, reference_dir: Path
) -> None:
    records = [
        json.loads(line) for line in (reference_dir / "analysis-b10c384.jsonl").read_text().splitlines()
    ]
    got = _run(b10_engine, records, 1)
    for rec in records:
        ref, mine = rec["response"], got[rec["id"]]
        assert mine["rootInfo"]["visits"] == 1
        pol, rpol = np.array(mine["policy"]), np.array(ref["policy"])
        assert pol.shape == rpol.shape
        assert np.array_equal(pol == -1, rpol == -1), rec["id"]
        assert np.abs(pol - rpol).max() <= 1e-4, rec["id"]
        assert abs(mine["rootInfo"]["rawWinrate"] - ref["rootInfo"]["rawWinrate"]) <= 1e-4, rec["id"]
        assert abs(mine["rootInfo"]["rawLead"] - ref["rootInfo"]["rawLead"]) <= 0.01, rec["id"]
        assert mine["rootInfo"]["currentPlayer"] == ref["rootInfo"]["currentPlayer"]
