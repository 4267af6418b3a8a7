"""The real KataGo child behind the agent's ``AnalysisService``: answers, routing, terminate.

Judge: KataGo's own recorded raw-NN outputs (``rawnn-g170-b6c96.jsonl``, Eigen backend). With
``maxVisits: 1``, ``nnRandomize = false`` (symmetry 0) and ``ignorePreRootHistory: false`` (the
analysis engine drops pre-root history by default; the GTP recording kept it), the root of an
analysis answer is exactly that raw evaluation, so policy, ownership, winrate and lead must match
the record to the rounding of its printout, seen from Black (``reportAnalysisWinratesAs``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kg_helpers import Collector, query_9x9

from agent.engines.katago_binary import KataGoBinary, KataGoSettings
from agent.engines.katago_process import KataGoEngine, engine_from_settings
from agent.protocol.service import AnalysisService

pytestmark = pytest.mark.needs_katago

# after two passes the GTP recording evaluates a finished game; the analysis engine does not
GAME_OVER = "game-end-two-passes"


def _reference(reference_dir: Path) -> list[dict[str, Any]]:
    path = reference_dir / "rawnn-g170-b6c96.jsonl"
    if not path.is_file():
        pytest.skip(f"needs KataGo reference outputs: {path} missing")
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    small = [r for r in recs if r["board_x_size"] < 19 and r["selection_reason"] != GAME_OVER]
    big = [r for r in recs if r["board_x_size"] == 19 and r["selection_reason"] != GAME_OVER][:4]
    return small + big


def test_engine__describe_reads_version_and_models(shared_engine: KataGoEngine) -> None:
    info = shared_engine.describe()
    assert info["engine"] == "katago"
    assert info["state"] == "running"
    assert info["version"] == "1.18.1"
    assert info["git_hash"].startswith("92ee95c0")
    (model,) = info["models"]
    assert model["internalName"] == "g170-b6c96-s175395328-d26788732"
    assert model["version"] == 8
    assert model["maxBatchSize"] == 4


def test_service__answers_match_katago_raw_nn_records(
    shared_engine: KataGoEngine, reference_dir: Path
) -> None:
    recs = _reference(reference_dir)
    service = AnalysisService(shared_engine)
    out = Collector()
    for r in recs:
        query = {
            "id": r["id"],
            "moves": r["moves"],
            "rules": r["rules"],
            "komi": r["komi"],
            "boardXSize": r["board_x_size"],
            "boardYSize": r["board_y_size"],
            "maxVisits": 1,
            "includePolicy": True,
            "includeOwnership": True,
            "overrideSettings": {"ignorePreRootHistory": False},
        }
        service.handle_line(json.dumps(query), out)
    assert out.wait_finals([r["id"] for r in recs], timeout=120)
    assert len(recs) == 19  # 15 positions on 9x9, 13x13, 13x9 and 4 on 19x19
    for r in recs:
        (resp,) = out.finals(r["id"])
        raw, root = r["rawnn"], resp["rootInfo"]
        policy = [-1.0 if p is None else p for p in raw["policy"]] + [raw["policyPass"]]
        assert len(resp["policy"]) == len(policy)
        assert max(abs(a - b) for a, b in zip(resp["policy"], policy, strict=True)) < 2e-5, r["id"]
        own = [-w for w in raw["whiteOwnership"]]  # Black's view
        assert max(abs(a - b) for a, b in zip(resp["ownership"], own, strict=True)) < 2e-5, r["id"]
        assert root["rawWinrate"] == pytest.approx(raw["whiteLoss"] + raw["noResult"] / 2, abs=2e-5)
        assert root["rawLead"] == pytest.approx(-raw["whiteLead"], abs=1e-3)
        assert root["visits"] == 1


def test_service__katago_warnings_pass_through_once(shared_engine: KataGoEngine) -> None:
    service = AnalysisService(shared_engine)
    out = Collector()
    query = query_9x9("w1", [("B", "E5")], visits=2, overrideSettings={"noSuchSetting": 1})
    service.handle_line(json.dumps(query), out)
    assert out.wait_finals(["w1"], timeout=60)
    warnings = [r for r in out.responses if "warning" in r]
    assert len(warnings) == 1  # KataGo's own warning; the service stays quiet for this engine
    assert warnings[0]["id"] == "w1"
    assert "noSuchSetting" in warnings[0]["warning"]
    assert len(out.finals("w1")) == 1


def test_engine__same_client_id_from_two_clients_routed_apart(shared_engine: KataGoEngine) -> None:
    a, b = Collector(), Collector()
    shared_engine.submit_raw(query_9x9("same", [("B", "C3")], visits=2), a)
    shared_engine.submit_raw(query_9x9("same", [("B", "G7"), ("W", "C3")], visits=2), b)
    assert a.wait_finals(["same"], 60) and b.wait_finals(["same"], 60)
    assert len(a.finals()) == 1 and len(b.finals()) == 1
    assert a.finals()[0]["rootInfo"]["currentPlayer"] == "W"
    assert b.finals()[0]["rootInfo"]["currentPlayer"] == "B"


def test_engine__analyze_turns_each_get_one_final(shared_engine: KataGoEngine) -> None:
    out = Collector()
    moves = [("B", "E5"), ("W", "C3"), ("B", "G3")]
    shared_engine.submit_raw(query_9x9("turns", moves, visits=2, analyzeTurns=[0, 2, 3]), out)
    assert out.wait(lambda: len(out.finals()) >= 3, 60)
    assert sorted(r["turnNumber"] for r in out.finals()) == [0, 2, 3]
    assert shared_engine.stats()["pending"] == 0


def test_engine__empty_analyze_turns_answers_nothing_and_leaves_nothing_pending(
    shared_engine: KataGoEngine,
) -> None:
    """KataGo analyses nothing for ``analyzeTurns: []`` and says nothing: no entry may wait for it."""
    out = Collector()
    before = shared_engine.stats()["queries_completed"]
    shared_engine.submit_raw(query_9x9("none", [("B", "E5")], visits=2, analyzeTurns=[]), out)
    shared_engine.submit_raw(query_9x9("after", [("B", "E5")], visits=2), out)
    assert out.wait_finals(["after"], 60)
    assert [r["id"] for r in out.responses if not r.get("isDuringSearch")] == ["after"]
    stats = shared_engine.stats()
    assert stats["pending"] == 0
    assert stats["queries_completed"] == before + 2


def test_terminate__long_search_ends_with_one_final(shared_engine: KataGoEngine) -> None:
    service = AnalysisService(shared_engine)
    out = Collector()
    query = query_9x9("long", [("B", "D4")], visits=1_000_000, reportDuringSearchEvery=0.1)
    service.handle_line(json.dumps(query), out)
    assert out.wait(lambda: any(r.get("isDuringSearch") for r in out.responses), 60)
    service.handle_line(json.dumps({"id": "t", "action": "terminate", "terminateId": "long"}), out)
    assert out.wait_finals(["long"], 30)
    (final,) = out.finals("long")
    assert final["isDuringSearch"] is False
    assert final["rootInfo"]["visits"] < 1_000_000
    assert {"id": "t", "action": "terminate", "terminateId": "long"} in out.responses


def test_engine_from_settings__daemon_entry_point(
    katago_binary: KataGoBinary, b6_model: Path, tmp_path: Path
) -> None:
    settings = KataGoSettings.model_validate({"binary": str(katago_binary.path), "opencl_tuning": "generic"})
    engine = engine_from_settings(settings, b6_model, cache_dir=tmp_path)
    try:
        assert engine.describe()["config"].startswith(str(tmp_path / "configs"))
        out = Collector()
        engine.submit_raw(query_9x9("d", [("B", "E5")], visits=2), out)
        assert out.wait_finals(["d"], 60)
        assert "moveInfos" in out.finals("d")[0]
    finally:
        engine.close()
