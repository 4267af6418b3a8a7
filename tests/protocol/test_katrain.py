"""KaTrain gets its analysis from ``katago-edge analysis`` started exactly like KataGo.

Two layers:

* ``katrain_queries.jsonl`` is what KaTrain 1.20.0's engine driver really sent for a short 9x9
  game (recorded by ``katrain_session.py``): one query per move with ownership, policy,
  ``reportDuringSearchEvery`` and ``overrideSettings``, a find-alternatives query with
  ``avoidMoves``, a pondering query (``maxVisits`` 10,000,000) and its ``terminate``. It is
  replayed through the real CLI and the replies are read the way KaTrain reads them.
* When ``katrain`` (with ``kivy`` and ``pysgf``) is importable, ``katrain_session.py`` runs
  KaTrain's own ``KataGoEngine`` against the CLI (it imports headless).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from edge_fixtures import model_file

HERE = Path(__file__).resolve().parent
CLI = Path(sys.executable).with_name("katago-edge")
KATRAIN_CFG = """\
reportAnalysisWinratesAs = BLACK
conservativePass = true
maxVisits = 500
numAnalysisThreads = 2
numSearchThreads = 2
nnMaxBatchSize = 8
nnCacheSizePowerOfTwo = 20
nnMutexPoolSizePowerOfTwo = 16
nnRandomize = true
"""


def _katrain_reads(lines: list[str]) -> dict[str, list[dict[str, Any]]]:
    """KaTrain's ``_analysis_read_thread`` logic: by id; errors and warnings apart."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        if not line.strip():
            continue
        msg = json.loads(line)
        assert "id" in msg, f"KaTrain drops id-less lines: {msg}"
        assert "error" not in msg, msg
        by_id.setdefault(msg["id"], []).append(msg)
    return by_id


@pytest.mark.needs_models
def test_katrain__recorded_query_sequence_gets_full_answers(models_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "analysis_config.cfg"
    cfg.write_text(KATRAIN_CFG)
    queries = [json.loads(line) for line in (HERE / "katrain_queries.jsonl").read_text().splitlines()]
    for q in queries:
        if "maxVisits" in q and q["maxVisits"] < 1000:
            q["maxVisits"] = 8  # keep the test fast; the shape of the exchange is what matters
    stdin = "".join(json.dumps(q) + "\n" for q in queries)
    cmd = [
        str(CLI),
        "analysis",
        "-model",
        str(model_file(models_dir, "b6c96")),
        "-config",
        str(cfg),
        "-override-config",
        f"homeDataDir={tmp_path}",
    ]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    by_id = _katrain_reads(proc.stdout.splitlines())
    analysed = [q for q in queries if "action" not in q]
    for q in analysed:
        replies = [r for r in by_id[q["id"]] if "turnNumber" in r]
        finals = [r for r in replies if r["isDuringSearch"] is False]
        assert len(finals) == 1, q["id"]
        assert replies[-1] is finals[0]
        final = finals[0]
        if final.get("noResults"):
            assert q["maxVisits"] >= 1000  # only the pondering query is terminated before it ran
            continue
        n = q["boardXSize"] * q["boardYSize"]
        assert final["turnNumber"] == q["analyzeTurns"][0]
        assert final["rootInfo"]["visits"] >= 1 and {"winrate", "scoreLead"} <= final["rootInfo"].keys()
        assert len(final["ownership"]) == n and len(final["policy"]) == n + 1
        for info in final["moveInfos"]:
            assert {"move", "order", "visits", "winrate", "scoreLead", "pv", "prior"} <= info.keys()
            assert len(info["ownership"]) == n
        if "avoidMoves" in q:
            avoided = set(q["avoidMoves"][0]["moves"])
            assert not avoided & {m["move"] for m in final["moveInfos"]}
    terminate = next(q for q in queries if q.get("action") == "terminate")
    assert by_id[terminate["id"]] == [terminate]


def _katrain_python() -> str | None:
    candidates = [os.environ.get("KATRAIN_PYTHON"), sys.executable]
    for py in candidates:
        if not py:
            continue
        probe = subprocess.run(
            [py, "-c", "import katrain.core.engine"],
            capture_output=True,
            timeout=120,
            check=False,
            env={**os.environ, "KIVY_NO_ARGS": "1", "KIVY_NO_CONSOLELOG": "1"},
        )
        if probe.returncode == 0:
            return py
    return None


@pytest.mark.slow
@pytest.mark.needs_models
def test_katrain__engine_driver_analyses_a_short_game(models_dir: Path, tmp_path: Path) -> None:
    py = _katrain_python()
    if py is None:
        pytest.skip(
            "katrain's engine module is not importable (pip install katrain kivy pysgf, or set KATRAIN_PYTHON)"
        )
    cfg = tmp_path / "analysis_config.cfg"
    cfg.write_text(KATRAIN_CFG)
    out = tmp_path / "summary.json"
    env = {**os.environ, "KIVY_HOME": str(tmp_path / "kivy")}
    proc = subprocess.run(
        [
            py,
            str(HERE / "katrain_session.py"),
            str(CLI),
            str(model_file(models_dir, "b6c96")),
            str(cfg),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["errors"] == []
    for node in summary["nodes"]:
        assert node["complete"] and node["root_visits"] >= 1
        assert node["ownership"] == 81 and node["policy"] == 82
    # the last node's analysis may be replaced by the pondering query KaTrain terminates after 1 s
    assert all(node["root_visits"] >= 24 for node in summary["nodes"][:-1])
