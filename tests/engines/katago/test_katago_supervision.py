"""Supervision of the real KataGo child: kill -9 mid-burst, start failures, crash loops, hangs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from kg_helpers import Collector, fast_settings, query_9x9

from agent.engines.katago_binary import KataGoBinary
from agent.engines.katago_process import KataGoEngine
from agent.errors import EngineError
from agent.protocol.service import AnalysisService

pytestmark = pytest.mark.needs_katago

# 20 different first moves: 20 positions, so no answer comes from KataGo's NN cache
BURST_POINTS = [*(c + r for c in "BCDEFGH" for r in "37"), "E5", "D5", "F5", "E4", "E6", "C5"]


def _wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_kill9_during_burst__all_20_answered_exactly_once(
    katago_binary: KataGoBinary, b6_model: Path, tmp_path: Path
) -> None:
    engine = KataGoEngine(katago_binary, b6_model, fast_settings(tmp_path)).start()
    try:
        service = AnalysisService(engine)
        out = Collector()
        ids = [f"burst{i}" for i in range(20)]
        first_pid = engine.stats()["pid"]
        for qid, point in zip(ids, BURST_POINTS, strict=True):
            service.handle_line(json.dumps(query_9x9(qid, [("B", point)], visits=10)), out)
        assert out.wait(lambda: len(out.finals()) >= 1, 60)
        answered_before = len(out.finals())
        os.kill(first_pid, signal.SIGKILL)
        assert out.wait_finals(ids, timeout=120), engine.stats()
        time.sleep(0.5)  # nothing more may arrive: no duplicates from the old or new child
        finals = out.finals()
        assert Counter(r["id"] for r in finals) == Counter(ids)
        errors = [r for r in finals if "error" in r]
        assert all("restart" in r["error"] or "exited" in r["error"] for r in errors)
        assert not errors  # one death: every in-flight query is re-sent once and answered
        for r in finals:
            assert r["rootInfo"]["visits"] >= 1 and r["moveInfos"]
        stats = engine.stats()
        assert answered_before < 20
        assert stats["state"] == "running"
        assert stats["restarts"] == 1 and stats["generation"] == 2
        assert stats["pid"] != first_pid
        assert 1 <= stats["queries_resent"] <= 20 - answered_before
        assert stats["queries_completed"] == 20 and stats["pending"] == 0
        assert "exited with code -9" in stats["last_exit"]
        # the restarted child serves new work
        service.handle_line(json.dumps(query_9x9("after", [("B", "G3")], visits=4)), out)
        assert out.wait_finals(["after"], 60)
    finally:
        engine.close()


def test_bad_model__clear_error_with_katago_stderr(katago_binary: KataGoBinary, tmp_path: Path) -> None:
    engine = KataGoEngine(katago_binary, tmp_path / "missing.bin.gz", fast_settings(tmp_path))
    with pytest.raises(EngineError) as info:
        engine.start()
    message = str(info.value)
    assert message.startswith("KataGo exited at start (exit code")
    assert "Error loading or parsing model file" in message.splitlines()[0]
    assert "KataGo's last stderr lines:" in message
    assert "KataGo v1.18.1" in message  # the stderr tail itself
    assert engine.stats()["state"] == "failed"
    out = Collector()
    engine.submit_raw(query_9x9("x", []), out)
    assert out.responses == [{"id": "x", "error": "KataGo engine failed: " + message}]


def test_bad_config__clear_error_with_katago_stderr(
    katago_binary: KataGoBinary, b6_model: Path, tmp_path: Path
) -> None:
    settings = fast_settings(tmp_path, extra={"nnMaxBatchSize": "many"})
    with pytest.raises(EngineError, match="Could not parse 'many' as int for key 'nnMaxBatchSize'"):
        KataGoEngine(katago_binary, b6_model, settings).start()


def test_crash_loop__restart_budget_stops_it(
    katago_binary: KataGoBinary, b6_model: Path, tmp_path: Path
) -> None:
    model = tmp_path / "net.bin.gz"
    shutil.copyfile(b6_model, model)
    settings = fast_settings(tmp_path, restart_budget=3, restart_window_s=60.0, restart_backoff_s=0.05)
    engine = KataGoEngine(katago_binary, model, settings).start()
    try:
        out = Collector()
        engine.submit_raw(query_9x9("doomed", [("B", "E5")], visits=1_000_000), out)
        model.unlink()  # every restart now exits at start
        os.kill(engine.stats()["pid"], signal.SIGKILL)
        assert out.wait_finals(["doomed"], 60)
        (error,) = out.finals("doomed")
        assert "3 restarts within 60 s, giving up" in error["error"]
        assert "Error loading or parsing model file" in error["error"]
        stats = engine.stats()
        assert stats["state"] == "failed" and stats["restarts"] == 3 and stats["pid"] is None
        later = Collector()
        engine.submit_raw(query_9x9("later", []), later)
        assert "KataGo engine failed" in later.responses[0]["error"]
    finally:
        engine.close()


@pytest.mark.slow
def test_hang__quiet_search_pinged_stopped_child_killed(
    katago_binary: KataGoBinary, b6_model: Path, tmp_path: Path
) -> None:
    engine = KataGoEngine(katago_binary, b6_model, fast_settings(tmp_path, hang_timeout_s=2.0)).start()
    try:
        out = Collector()
        # a healthy search with no partial reports is silent for longer than the limit; pings
        # (query_version, answered at once by KataGo's input thread) keep it alive
        start = time.monotonic()
        engine.submit_raw(
            query_9x9("quiet", [("B", "E5")], visits=1_000_000, overrideSettings={"maxTime": 3.5}), out
        )
        assert out.wait_finals(["quiet"], 60)
        assert time.monotonic() - start > 3.0
        assert engine.stats()["restarts"] == 0
        # a stopped child answers nothing: killed after hang_timeout_s, the query re-sent
        pid = engine.stats()["pid"]
        engine.submit_raw(query_9x9("stuck", [("B", "C3")], visits=16), out)
        os.kill(pid, signal.SIGSTOP)
        # more than a pipe buffer for a child that reads nothing: submit must not block (a
        # blocked write would only end with the child, killed hang_timeout_s after it went quiet)
        engine.submit_raw(query_9x9("big", [("B", "D4")], visits=2, padding="x" * 300_000), out)
        assert engine.stats()["hangs_killed"] == 0 and engine.stats()["pid"] == pid
        assert out.wait_finals(["stuck", "big"], 60)
        assert [r["field"] for r in out.responses if r.get("id") == "big" and "warning" in r] == ["padding"]
        stats = engine.stats()
        assert "moveInfos" in out.finals("stuck")[0]
        assert stats["hangs_killed"] == 1 and stats["restarts"] == 1 and stats["pid"] != pid
        assert "hung" in stats["last_exit"]
    finally:
        engine.close()


def test_close__in_flight_query_gets_its_final_response(
    katago_binary: KataGoBinary, b6_model: Path, tmp_path: Path
) -> None:
    engine = KataGoEngine(katago_binary, b6_model, fast_settings(tmp_path)).start()
    out = Collector()
    engine.submit_raw(query_9x9("open", [("B", "E5")], visits=1_000_000, reportDuringSearchEvery=0.1), out)
    engine.submit_raw(query_9x9("short", [("B", "C3")], visits=8), out)
    assert out.wait(lambda: len(out.responses) >= 1, 60)
    pid = engine.stats()["pid"]
    start = time.monotonic()
    engine.close(timeout=5.0)  # 4 s to finish queued work, then terminate and 1 s for finals
    assert time.monotonic() - start < 7.0
    (final,) = out.finals("open")
    assert final["isDuringSearch"] is False and 1 <= final["rootInfo"]["visits"] < 1_000_000
    (short,) = out.finals("short")
    assert short["rootInfo"]["visits"] >= 8  # finished, not cut short
    assert engine.stats()["state"] == "stopped"
    assert _wait(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 5.0)
    after = Collector()
    engine.submit_raw(query_9x9("late", []), after)
    assert after.responses == [{"id": "late", "error": "KataGo engine is stopped"}]


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_query_timeout__old_query_terminated_with_its_result(
    katago_binary: KataGoBinary, b6_model: Path, tmp_path: Path
) -> None:
    engine = KataGoEngine(katago_binary, b6_model, fast_settings(tmp_path, query_timeout_s=1.0)).start()
    try:
        out = Collector()
        start = time.monotonic()
        engine.submit_raw(query_9x9("endless", [("B", "E5")], visits=1_000_000), out)
        assert out.wait_finals(["endless"], 30)
        assert 1.0 <= time.monotonic() - start < 10.0
        (final,) = out.finals("endless")
        assert final["isDuringSearch"] is False and 1 <= final["rootInfo"]["visits"] < 1_000_000
        assert engine.stats()["restarts"] == 0
    finally:
        engine.close()
