"""Test support for rollouts: real daemons (``katago-edge serve`` processes) on one real Mosquitto,
the CLI (``katago-edge fleet ...``) as a process, and small MQTT readers.

Imported as ``from fleet_support import ...`` (helpers of tests/app and tests/transports/mqtt are
put on the path here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
for helper_dir in (TESTS / "app", TESTS / "transports" / "mqtt"):
    if str(helper_dir) not in sys.path:
        sys.path.insert(0, str(helper_dir))

from daemon_support import REPO, ServeProcess, base_env, socket_request  # noqa: E402
from mqtt_support import MOSQUITTO, NEEDS_MOSQUITTO, Mosquitto, free_port, read_retained, wait_for  # noqa: E402

__all__ = [
    "MOSQUITTO",
    "NEEDS_MOSQUITTO",
    "REPO",
    "Device",
    "Mosquitto",
    "ask",
    "base_env",
    "cli",
    "free_port",
    "run_store",
    "socket_request",
    "wait_until",
]

QUERY = {"rules": "tromp-taylor", "komi": 7.5, "boardXSize": 9, "boardYSize": 9, "moves": [["B", "E5"]]}


def run_store() -> dict[str, str]:
    """The test run's model store (tests/conftest.py), for daemons and CLI processes: each network
    is converted and verified once per run, never taken from a developer's cache."""
    store = os.environ.get("KATAGO_EDGE_ARTIFACT_STORE")
    return {"KATAGO_EDGE_ARTIFACT_STORE": store} if store else {}


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    return wait_for(pred, timeout, interval, what)


def cli(
    *args: str, timeout: float = 600.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``katago-edge ARGS`` as a process (the real entry point)."""
    return subprocess.run(
        [sys.executable, "-m", "agent.cli.main", *args],
        env=env or base_env(**run_store()),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def spawn_cli(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "agent.cli.main", *args],
            env=base_env(**run_store()),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def ask(sock: Path, query: dict[str, Any]) -> dict[str, Any]:
    """One action over a daemon's Unix socket (``query_models``, ``query_health``): its one answer."""
    import socket as socketlib

    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(sock))
        s.sendall(json.dumps(query).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
    return dict(json.loads(buf.split(b"\n", 1)[0]))


class Device:
    """One real daemon: ``katago-edge serve`` with its own state folder, socket and device id."""

    def __init__(self, root: Path, device_id: str, broker: Mosquitto, model: Path, config: str = "") -> None:
        self.id = device_id
        self.dir = root / device_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock = self.dir / "agent.sock"
        self.broker = broker
        self.model = model
        self.config = self.dir / "agent.toml"
        self.config.write_text(config)
        self.proc: ServeProcess | None = None
        self.runs = 0

    def start(self, **env: str) -> Device:
        self.runs += 1
        self.sock.unlink(missing_ok=True)
        self.proc = ServeProcess(
            [
                "--config",
                str(self.config),
                "--model",
                str(self.model),
                "--device-id",
                self.id,
                "--broker",
                f"127.0.0.1:{self.broker.port}",
                "--socket",
                str(self.sock),
                "--websocket",
                "none",
            ],
            base_env(
                **{
                    "KATAGO_EDGE_STATE_DIR": str(self.dir / "state"),
                    "KATAGO_EDGE_CACHE_DIR": str(self.dir / "cache"),
                    "KATAGO_EDGE_MQTT__HEALTH_INTERVAL_S": "1",
                    **run_store(),
                    **env,
                }
            ),
            self.dir / f"serve-{self.runs}.log",
        )
        return self

    def wait_ready(self, timeout: float = 300.0) -> Device:
        """Serving, and online on the broker (subscribed: a request sent now is not lost)."""
        assert self.proc is not None
        started = time.time() - 1.0
        self.proc.wait_log("serving (profile", timeout)

        def online() -> bool:
            msg = read_retained(self.broker.port, [f"katago/{self.id}/status"], timeout=1.0).get(
                f"katago/{self.id}/status"
            )
            status = json.loads(msg.payload) if msg is not None else {}
            return status.get("state") == "online" and float(status.get("since", 0)) >= started

        wait_until(online, 60, f"{self.id} online")
        return self

    def health_answer(self) -> dict[str, Any]:
        with_health = self._ask({"id": "h", "action": "query_health"})
        return dict(with_health.get("health") or {})

    def _ask(self, query: dict[str, Any]) -> dict[str, Any]:
        return ask(self.sock, query)

    def model_name(self) -> str:
        """``query_models``' name of the network serving now."""
        answer = self._ask({"id": "m", "action": "query_models"})
        return str(answer["models"][0]["name"])

    def analyse(self, visits: int = 4) -> dict[str, Any]:
        final = socket_request(self.sock, {**QUERY, "id": f"a-{time.monotonic_ns()}", "maxVisits": visits})[
            -1
        ]
        assert "error" not in final, final
        return final

    def deployment(self) -> dict[str, Any]:
        return dict(self.health_answer().get("deployment") or {})

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("serve-*.log")))

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        code = self.proc.stop()
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc = None


class EventLog:
    """Every deployment event of the fleet, as the operator sees them (a plain MQTT subscriber)."""

    def __init__(self, port: int, prefix: str = "katago") -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(f"{prefix}/+/deployment/events", qos=1)
        self._client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.events.append(json.loads(msg.payload))

    def of(self, device: str, deployment: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                e
                for e in self.events
                if e["device"] == device and (deployment is None or e["deployment"] == deployment)
            ]

    def states(self, device: str, deployment: str | None = None) -> list[str]:
        out: list[str] = []
        for e in self.of(device, deployment):
            if not out or out[-1] != e["state"]:
                out.append(e["state"])
        return out

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def publish_raw(port: int, topic: str, payload: bytes, retain: bool = True, **login: str) -> int:
    """Publish with a plain client; returns the PUBACK reason code value (0 = accepted)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    codes: list[int] = []
    done = threading.Event()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if login:
        client.username_pw_set(login["username"], login["password"])
    client.on_publish = lambda c, u, mid, reason, props: (codes.append(reason.value), done.set())
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=retain)
        assert done.wait(10), "no PUBACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return codes[0]
