"""``katago-edge analysis --engine katago``: the drop-in command over a real KataGo child."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
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
    cmd = [sys.executable, "-m", "agent.cli.main", "analysis", "--engine", "katago"]
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


def test_cli_analysis__sigterm_stops_the_katago_child_too(
    katago_binary: KataGoBinary, b6_model: Path, tmp_path: Path
) -> None:
    """A timeout or supervisor ends the command with SIGTERM: the KataGo child (in its own
    session, so a terminal's Ctrl-C does not reach it first) must not be left running."""
    env = {**os.environ, "KATAGO_EDGE_CACHE": str(tmp_path)}
    cmd = [sys.executable, "-m", "agent.cli.main", "analysis", "--engine", "katago"]
    cmd += ["--katago", str(katago_binary.path), "-model", str(b6_model)]
    with subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, text=True
    ) as proc:
        _sigterm_while_running(proc)


def _sigterm_while_running(proc: subprocess.Popen[str]) -> None:
    try:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(query_9x9("long", [("B", "E5")], visits=1_000_000)) + "\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 90
        children: list[psutil.Process] = []
        while time.monotonic() < deadline and not children:
            children = [c for c in psutil.Process(proc.pid).children(recursive=True) if "katago" in c.name()]
            time.sleep(0.2)
        assert children, "no KataGo child started"
        time.sleep(2.0)  # the query is running
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        assert rc == 128 + signal.SIGTERM
        _gone, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, f"KataGo child still running after SIGTERM: {[p.pid for p in alive]}"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cli_analysis__sigkill_takes_the_katago_child_with_it(
    katago_binary: KataGoBinary, b6_model: Path, tmp_path: Path
) -> None:
    """``kill -9`` runs no clean-up in the agent: PR_SET_PDEATHSIG must end KataGo at once
    (without it the child went on for 1-5 s, until its next write to the closed pipe)."""
    env = {**os.environ, "KATAGO_EDGE_CACHE": str(tmp_path)}
    cmd = [sys.executable, "-m", "agent.cli.main", "analysis", "--engine", "katago"]
    cmd += ["--katago", str(katago_binary.path), "-model", str(b6_model)]
    with subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, text=True
    ) as proc:
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(query_9x9("long", [("B", "E5")], visits=1_000_000)) + "\n")
            proc.stdin.flush()
            deadline = time.monotonic() + 90
            children: list[psutil.Process] = []
            while time.monotonic() < deadline and not children:
                children = [
                    c for c in psutil.Process(proc.pid).children(recursive=True) if "katago" in c.name()
                ]
                time.sleep(0.2)
            assert children, "no KataGo child started"
            time.sleep(1.0)  # the query is running
            proc.kill()
            proc.wait(timeout=10)
            t0 = time.monotonic()
            while (alive := [c for c in children if _running(c)]) and time.monotonic() - t0 < 5:
                time.sleep(0.02)
            waited = time.monotonic() - t0
            print(f"SIGKILL of the agent: KataGo child gone after {waited:.2f} s")
            assert not alive and waited < 0.5, f"KataGo child alive {waited:.2f} s after the agent's SIGKILL"
        finally:
            if proc.poll() is None:
                proc.kill()


def _running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (a killed child of a dead parent waits for init to reap it)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
