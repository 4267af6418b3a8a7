"""``katago-edge analysis --engine katago``: the drop-in command over a real KataGo child."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kg_helpers import query_9x9

from agent.engines.katago_binary import KataGoBinary

pytestmark = pytest.mark.needs_katago


def test_cli_analysis__engine_katago_serves_stdin(
    katago_binary: KataGoBinary, b6_model: Path, tmp_path: Path
) -> None:
    lines = [
        query_9x9("q1", [("B", "E5"), ("W", "C3")], visits=6),
        {"id": "v", "action": "query_models"},
        query_9x9("bad", [("B", "Z99")]),
    ]
    env = {**os.environ, "KATAGO_EDGE_CACHE": str(tmp_path)}
    cmd = [sys.executable, "-m", "agent.cli", "analysis", "--engine", "katago"]
    cmd += ["--katago", str(katago_binary.path), "-model", str(b6_model)]
    proc = subprocess.run(
        cmd,
        input="".join(json.dumps(q) + "\n" for q in lines),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = {r["id"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert out["bad"] == {"id": "bad", "field": "moves", "error": "Could not parse board location: Z99"}
    assert out["v"]["models"][0]["internalName"] == "g170-b6c96-s175395328-d26788732"
    assert out["q1"]["isDuringSearch"] is False  # stdin EOF: queued work finishes, like KataGo
    assert out["q1"]["rootInfo"]["visits"] >= 6 and out["q1"]["rootInfo"]["currentPlayer"] == "B"
    assert "KataGo 1.18.1 started" in proc.stderr  # KataGo's stderr and ours go to the log
