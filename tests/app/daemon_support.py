"""Helpers for the daemon tests: a real mosquitto (the class from tests/transports/mqtt), a datagram socket
standing in for systemd's NOTIFY_SOCKET, and ``katago-edge serve`` run as a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "transports" / "mqtt"))
from mqtt_support import MOSQUITTO, NEEDS_MOSQUITTO, Mosquitto, free_port

REPO = Path(__file__).resolve().parents[2]
__all__ = ["MOSQUITTO", "NEEDS_MOSQUITTO", "REPO", "Mosquitto", "NotifySocket", "ServeProcess", "free_port"]


class NotifySocket:
    """A bound AF_UNIX datagram socket recording every sd_notify message with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def lines(self) -> list[tuple[float, str]]:
        """Each message split into its ``KEY=value`` lines, keeping the arrival time."""
        return [(t, line) for t, msg in list(self.messages) for line in msg.splitlines()]

    def first(self, text: str) -> float | None:
        return next((t for t, line in self.lines() if line == text or line.startswith(text)), None)

    def wait_for(self, text: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.first(text)
            if found is not None:
                return found
            time.sleep(0.02)
        raise AssertionError(f"no {text!r} in {self.lines()}")

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(2)


class ServeProcess:
    """``katago-edge serve`` in a child process, with its stderr in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli.main", "serve", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in the log:\n{self.text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KATAGO_EDGE_", "NOTIFY_", "WATCHDOG_"))}
    env.update(extra)
    return env


def socket_request(
    path: Path, query: dict[str, Any], timeout: float = 30.0, on_first: Any = None
) -> list[dict[str, Any]]:
    """Send one query over the Unix socket; return its responses up to the final one."""
    out: list[dict[str, Any]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(query).encode() + b"\n")
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                response = json.loads(line)
                out.append(response)
                if len(out) == 1 and on_first is not None:
                    on_first(response)
                if "error" in response or response.get("isDuringSearch") is False:
                    return out
