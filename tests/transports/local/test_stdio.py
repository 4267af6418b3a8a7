"""The stdin/stdout transport (``katago-edge analysis``): one JSON line in, JSON lines out."""

from __future__ import annotations

import io
import json
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "protocol"))
from protocol_helpers import make_engine

from agent.protocol.service import AnalysisService
from agent.transports.local.stdio import StdioTransport, encode_line

Q = {"moves": [["B", "D4"]], "rules": "chinese", "komi": 7.5, "boardXSize": 9, "boardYSize": 9}


def _lines(*objs: object) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def test_stdio__eof_finishes_queued_work() -> None:
    svc = AnalysisService(make_engine(max_visits=15))
    stdin = io.BytesIO(_lines({"id": "a", **Q}, {"id": "b", **Q, "analyzeTurns": [0, 1]}) + b"\xff\n")
    stdout = io.BytesIO()
    assert StdioTransport(svc, stdin, stdout).serve() == 0
    out = [json.loads(line) for line in stdout.getvalue().splitlines()]
    finals = sorted((r["id"], r["turnNumber"]) for r in out if r.get("isDuringSearch") is False)
    assert finals == [("a", 1), ("b", 0), ("b", 1)]
    assert all(r["rootInfo"]["visits"] >= 15 for r in out if "rootInfo" in r)
    assert sum("error" in r for r in out) == 1


def test_stdio__quit_without_waiting_still_gives_final_responses() -> None:
    svc = AnalysisService(make_engine(max_visits=10**9))
    stdin = io.BytesIO(_lines(*({"id": f"q{i}", **Q} for i in range(3))))
    stdout = io.BytesIO()
    StdioTransport(svc, stdin, stdout, quit_without_waiting=True).serve()
    out = [json.loads(line) for line in stdout.getvalue().splitlines()]
    finals = [r for r in out if r.get("isDuringSearch") is False]
    assert sorted(r["id"] for r in finals) == ["q0", "q1", "q2"]


def test_stdio__concurrent_emits_never_interleave() -> None:
    svc = AnalysisService(make_engine())
    stdout = io.BytesIO()
    t = StdioTransport(svc, io.BytesIO(b""), stdout)
    big = {"id": "x", "data": list(range(2000))}
    threads = [threading.Thread(target=lambda: [t.emit(big) for _ in range(20)]) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    svc.close()
    lines = stdout.getvalue().splitlines()
    assert len(lines) == 80 and all(json.loads(line) == big for line in lines)


def test_stdio__nan_becomes_null() -> None:
    assert json.loads(encode_line({"id": "n", "v": float("nan"), "l": [float("inf"), 1.0]})) == {
        "id": "n",
        "v": None,
        "l": [None, 1.0],
    }
