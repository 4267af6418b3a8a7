"""Test support for the MQTT tests: a real mosquitto broker on loopback and a tiny analysis service.

``Mosquitto`` writes a generated config (listener on a free 127.0.0.1 port, persistence in a temp
dir, optional password file and TLS), starts the Debian ``mosquitto`` binary and stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
NEEDS_MOSQUITTO = "needs mosquitto (apt-get install -y mosquitto; Makefile DEB_TEST_PACKAGES)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """One mosquitto process with a generated config; restartable on the same port and store."""

    def __init__(self, workdir: Path, *, extra_conf: str = "", port: int | None = None) -> None:
        assert MOSQUITTO is not None
        self.workdir = workdir
        self.port = port or free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        (workdir / "store").mkdir(exist_ok=True)
        # As root, mosquitto would drop to user "mosquitto", which cannot write into pytest's tmp dirs.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            user + f"listener {self.port} 127.0.0.1\nset_tcp_nodelay true\n"
            f"persistence true\npersistence_location {workdir / 'store'}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 100000\nmax_inflight_messages 100\n"
            f"log_dest file {self.log}\nlog_type error\nlog_type warning\nlog_type notice\nlog_type debug\n"
            + (extra_conf if "allow_anonymous" in extra_conf else "allow_anonymous true\n" + extra_conf)
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [str(MOSQUITTO), "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}: {err} {self.read_log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def add_password(workdir: Path, user: str, password: str) -> Path:
    path = workdir / "passwords"
    flags = ["-b"] if path.exists() else ["-c", "-b"]
    subprocess.run(
        ["mosquitto_passwd", *flags, str(path), user, password], check=True, timeout=30, capture_output=True
    )
    path.chmod(0o600)
    return path


class StubService:
    """A small stand-in for ``AnalysisService.handle_query``: answers from its own thread like an
    engine does, with ``partials`` partial results (``isDuringSearch: true``) before the final."""

    def __init__(self, delay_s: float = 0.0, partials: int = 0, label: str = "stub") -> None:
        self.delay_s = delay_s
        self.partials = partials
        self.label = label
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def handle_query(self, query: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> None:
        qid = query["id"]
        with self._lock:
            self.seen.append(qid)
        if "action" in query:
            emit({"id": qid, "action": query["action"]})
            return
        moves = query.get("moves")
        if not isinstance(moves, list):
            emit({"id": qid, "field": "moves", "error": "Could not parse moves"})
            return
        turns = query.get("analyzeTurns") or [len(moves)]

        def run() -> None:
            for turn in turns:
                for i in range(self.partials):
                    time.sleep(self.delay_s / (self.partials + 1))
                    emit(self._resp(qid, turn, True, i + 1))
                time.sleep(self.delay_s / (self.partials + 1))
                emit(self._resp(qid, turn, False, self.partials + 1))

        if self.delay_s == 0 and self.partials == 0:
            run()
        else:
            threading.Thread(target=run, daemon=True).start()

    def _resp(self, qid: str, turn: int, during: bool, visits: int) -> dict[str, Any]:
        return {
            "id": qid,
            "turnNumber": turn,
            "isDuringSearch": during,
            "moveInfos": [{"move": "D4", "visits": visits, "winrate": 0.5, "scoreLead": 0.0, "order": 0}],
            "rootInfo": {"visits": visits, "winrate": 0.5, "scoreLead": 0.0, "server": self.label},
        }


def wait_for(
    pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> Any:
    """``pred()``'s first true value, polled every ``interval`` s; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not met within {timeout:g} s")


def env_without_proxy() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def read_retained(port: int, topics: list[str], timeout: float = 3.0, **tls: Any) -> dict[str, Any]:
    """Subscribe with a fresh client and collect the retained message of each topic (topic -> msg)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: dict[str, Any] = {}
    done = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if msg.retain:
            got[msg.topic] = msg
            if all(t in got for t in topics):
                done.set()

    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.subscribe([(t, 1) for t in topics])
    c.loop_start()
    try:
        done.wait(timeout)
    finally:
        c.disconnect()
        c.loop_stop()
    return got
