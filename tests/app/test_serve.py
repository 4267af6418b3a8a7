"""``katago-edge serve`` as a real process: sd_notify through a datagram socket standing in for
systemd, SIGTERM during a search, SIGHUP reload, start-up failures. The engine is the native
engine over the deterministic fake network (``--model fake:delay=S`` makes each NN batch slow)."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from daemon_support import (
    Mosquitto,
    NotifySocket,
    ServeProcess,
    base_env,
    free_port,
    socket_request,
)
from edge_fixtures import model_file
from paho.mqtt.enums import CallbackAPIVersion

from agent.engines.katago_binary import default_cache_dir, ensure_katrain_katago, opencl_available
from agent.errors import EngineError
from agent.transports.mqtt.client import MqttRequester
from agent.transports.mqtt.settings import MqttSettings

QUERY = {
    "id": "q1",
    "moves": [["B", "D4"]],
    "rules": "japanese",
    "komi": 6.5,
    "boardXSize": 9,
    "boardYSize": 9,
}


def _serve(tmp: Path, notify: NotifySocket | None, *args: str, **env: str) -> ServeProcess:
    extra = {"NOTIFY_SOCKET": str(notify.path)} if notify else {}
    return ServeProcess(list(args), base_env(**extra, **env), tmp / "serve.log")


class StatusWatcher:
    """Records the ``status`` documents (and the last ``health``) of one device."""

    def __init__(self, port: int, device: str) -> None:
        self.states: list[str] = []
        self.health: dict[str, Any] = {}
        self._client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *_a: c.subscribe(f"katago/{device}/#", qos=1)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        if msg.topic.endswith("/status"):
            self.states.append(json.loads(msg.payload)["state"])
        elif msg.topic.endswith("/health") and msg.payload:
            self.health = json.loads(msg.payload)

    def wait(self, state: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.states and self.states[-1] == state:
                return
            time.sleep(0.05)
        raise AssertionError(f"status never became {state!r}: {self.states}")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def test_serve__ready_only_after_the_engine_answered__then_watchdog_pings(
    short_tmp: Path, notify_socket: NotifySocket
) -> None:
    sock = short_tmp / "agent.sock"
    dead_broker = f"127.0.0.1:{free_port()}"  # nothing listens there: local serving must not care
    proc = _serve(
        short_tmp,
        notify_socket,
        "--model",
        "fake:delay=0.4",
        "--broker",
        dead_broker,
        "--socket",
        str(sock),
        "--websocket",
        "none",
        WATCHDOG_USEC="400000",
    )
    try:
        ready = notify_socket.wait_for("READY=1", 60)
        testing = notify_socket.first("STATUS=testing the engine")
        assert testing is not None and ready - testing >= 0.4, notify_socket.lines()
        assert "engine answered its test query" in proc.text()
        assert sock.exists()
        deadline = time.monotonic() + 30  # 4 pings take 0.8 s; a loaded machine may delay them
        while time.monotonic() < deadline:
            pings = [t for t, line in notify_socket.lines() if line == "WATCHDOG=1"]
            if len(pings) >= 4:
                break
            time.sleep(0.1)
        assert len(pings) >= 4 and min(pings) > ready  # every 0.2 s, only from the serving loop
        answer = socket_request(sock, {**QUERY, "maxVisits": 3})
        assert answer[-1]["isDuringSearch"] is False and answer[-1]["rootInfo"]["visits"] >= 3
        assert any(line.startswith("STATUS=serving") for _, line in notify_socket.lines())
        # `echo '{...}' | socat - UNIX-CONNECT:agent.sock`: input ends at once, answers still come
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(sock))
            s.sendall(
                json.dumps({**QUERY, "id": "h1", "maxVisits": 2}).encode()
                + b"\n"
                + json.dumps({**QUERY, "id": "h2", "maxVisits": 2, "analyzeTurns": [0, 0]}).encode()
                + b"\n"
            )
            s.shutdown(socket.SHUT_WR)
            buf = b""
            while chunk := s.recv(65536):
                buf += chunk
        finals = [json.loads(x) for x in buf.splitlines()]
        assert sorted((r["id"], r["isDuringSearch"]) for r in finals) == [("h1", False), ("h2", False)]
    finally:
        code = proc.stop()
    assert code == 0, proc.text()
    assert notify_socket.first("STOPPING=1") is not None


def test_serve__sigterm_during_a_search__final_responses__stopped__exit_0(
    short_tmp: Path, notify_socket: NotifySocket, broker: Mosquitto
) -> None:
    sock = short_tmp / "agent.sock"
    proc = _serve(
        short_tmp,
        notify_socket,
        "--model",
        "fake:delay=0.05",
        "--broker",
        f"127.0.0.1:{broker.port}",
        "--device-id",
        "dev-term",
        "--socket",
        str(sock),
        "--websocket",
        "none",
        KATAGO_EDGE_MQTT__HEALTH_INTERVAL_S="0.2",  # the engine's queue, seen in its health
    )
    watcher = StatusWatcher(broker.port, "dev-term")
    requester = MqttRequester(MqttSettings.model_validate({"host": "127.0.0.1", "port": broker.port}))
    try:
        notify_socket.wait_for("READY=1", 60)
        watcher.wait("online", 20)
        deadline = time.monotonic() + 20
        while not watcher.health and time.monotonic() < deadline:
            time.sleep(0.1)
        agent = watcher.health.get("agent", {})
        assert agent.get("profile") and agent.get("engine") == "native", watcher.health
        assert watcher.health["device"]["memory"]["total_mb"] > 0, watcher.health
        assert watcher.health["device_id"] == "dev-term"
        requester.connect(10)
        long = {**QUERY, "maxVisits": 10_000_000, "reportDuringSearchEvery": 0.2}
        searching = threading.Event()
        result: dict[str, Any] = {}

        def ask() -> None:
            result["socket"] = socket_request(sock, long, 60, on_first=lambda _r: searching.set())

        client = threading.Thread(target=ask)
        client.start()
        assert searching.wait(30), proc.text()
        # one analysis thread: this one waits in the queue behind the socket's search
        mqtt_corr = requester.send("katago/dev-term/analysis/request", {**long, "id": "via-mqtt"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            engine = (watcher.health.get("device") or {}).get("engine") or {}
            if engine.get("queue_depth", 0) >= 1:
                break
            time.sleep(0.05)
        assert engine.get("queue_depth") == 1, watcher.health  # queued in the engine
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        client.join(30)
        code = proc.proc.wait(30)
        elapsed = time.monotonic() - started
        final = result["socket"][-1]
        assert final["id"] == "q1" and final["isDuringSearch"] is False
        assert final["rootInfo"]["visits"] > 1  # the search's own result, cut short
        mqtt_final = requester.wait(mqtt_corr, 10).responses[-1]
        assert mqtt_final["id"] == "via-mqtt" and mqtt_final["isDuringSearch"] is False
        assert mqtt_final.get("noResults") is True  # terminated while queued
        watcher.wait("stopped", 10)
        assert code == 0, proc.text()
        assert elapsed < 10  # well inside stop_timeout (20 s) and the unit's TimeoutStopSec (30 s)
        assert notify_socket.first("STOPPING=1") is not None
    finally:
        requester.close()
        watcher.close()
        proc.kill()


def test_serve__sighup_reloads_engine_and_keeps_serving_on_a_bad_config(
    short_tmp: Path, notify_socket: NotifySocket
) -> None:
    sock = short_tmp / "agent.sock"
    config = short_tmp / "agent.toml"
    base = (
        f'device_id = "reload"\nmodel = "fake"\n\n[socket]\npath = "{sock}"\n\n[websocket]\nenabled = false\n'
    )
    config.write_text(base + "\n[mqtt]\nenabled = false\n")
    proc = _serve(short_tmp, notify_socket, "--config", str(config))
    try:
        notify_socket.wait_for("READY=1", 60)
        config.write_text(base.replace('"fake"', '"fake:seed=3"') + "\n[mqtt]\nenabled = false\n")
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_log("reload: new engine", 30)
        assert notify_socket.first("RELOADING=1") is not None
        assert socket_request(sock, {**QUERY, "maxVisits": 2})[-1]["isDuringSearch"] is False
        config.write_text(base + "\n[mqtt]\nenabled = false\nbogus = 1\n")
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_log("reload failed, keeping the running config", 30)
        assert f"{config}:12: mqtt.bogus: unknown key" in proc.text()
        assert socket_request(sock, {**QUERY, "maxVisits": 2})[-1]["isDuringSearch"] is False
    finally:
        code = proc.stop()
    assert code == 0, proc.text()


def test_serve__startup_failure_is_one_line_and_never_ready(
    short_tmp: Path, notify_socket: NotifySocket
) -> None:
    missing = short_tmp / "no-such-net.bin.gz"
    proc = _serve(
        short_tmp,
        notify_socket,
        "--model",
        str(missing),
        "--broker",
        "none",
        "--socket",
        str(short_tmp / "s"),
        "--websocket",
        "none",
    )
    code = proc.proc.wait(60)
    proc.stop()
    last = proc.text().strip().splitlines()[-1]
    assert code == 1
    assert last.startswith("katago-edge serve: error: ") and str(missing) in last
    assert notify_socket.first("READY=1") is None
    assert any(line.startswith("STATUS=failed: ") for _, line in notify_socket.lines())
    assert not (short_tmp / "s").exists()


def test_serve__websocket_port_in_use_says_what_to_do(short_tmp: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _serve(
            short_tmp,
            None,
            "--model",
            "fake",
            "--broker",
            "none",
            "--socket",
            str(short_tmp / "s"),
            "--websocket",
            f"127.0.0.1:{port}",
        )
        code = proc.proc.wait(60)
        proc.stop()
    assert code == 1
    assert "--websocket HOST:PORT" in proc.text().strip().splitlines()[-1]


def test_serve__katago_binary_engine_answers_and_stops_cleanly(
    short_tmp: Path, notify_socket: NotifySocket, models_dir: Path
) -> None:
    """``engine = "katago"``: the daemon supervises KataGo (katrain 1.20.0's binary, OpenCL on PoCL)."""
    needs = "needs the KataGo binary"
    binary = os.environ.get("KATAGO_EDGE_KATAGO_BINARY")
    if not binary:
        missing = opencl_available()
        if missing is not None:
            pytest.skip(f"{needs}: {missing}")
        try:
            binary = str(ensure_katrain_katago(default_cache_dir()))
        except EngineError as exc:
            pytest.skip(f"{needs}: {exc}")
    model = model_file(models_dir, "b6c96")
    sock = short_tmp / "agent.sock"
    config = short_tmp / "agent.toml"
    config.write_text(
        f'device_id = "kg"\nengine = "katago"\nmodel = "{model}"\ncache_dir = "{short_tmp / "cache"}"\n'
        f'state_dir = "{short_tmp / "state"}"\n\n[socket]\npath = "{sock}"\n\n[websocket]\nenabled = false\n\n'
        "[mqtt]\nenabled = false\n\n[katago]\n"
        f'binary = "{binary}"\nopencl_tuning = "generic"\nnum_analysis_threads = 2\nnn_max_batch_size = 4\n'
    )
    proc = _serve(short_tmp, notify_socket, "--config", str(config))
    try:
        notify_socket.wait_for("READY=1", 180)
        answer = socket_request(sock, {**QUERY, "maxVisits": 8}, 120)
        final = answer[-1]
        assert final["id"] == "q1" and final["isDuringSearch"] is False and final["rootInfo"]["visits"] >= 8
    finally:
        code = proc.stop(timeout=60)
    assert code == 0, proc.text()


def test_serve__kill_9_with_5_accepted_mqtt_requests__all_answered_by_the_next_daemon(
    short_tmp: Path, broker: Mosquitto
) -> None:
    """A request is acknowledged to the broker only after its answer (#23): the requests a
    killed daemon had taken stay in its persistent session and the next daemon answers them."""
    config = short_tmp / "agent.toml"

    def write_config(model: str) -> None:
        config.write_text(
            f'device_id = "dev-kill"\nmodel = "{model}"\n\n[socket]\nenabled = false\n\n'
            f'[websocket]\nenabled = false\n\n[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
            "health_interval_s = 0.5\n"
        )

    # 100 visits take minutes at 1.5 s an evaluation: nothing can be answered before the kill
    # (at most 20 s after the requests); the next daemon's network has no delay
    write_config("fake:delay=1.5")
    watcher = StatusWatcher(broker.port, "dev-kill")
    requester = MqttRequester(MqttSettings.model_validate({"host": "127.0.0.1", "port": broker.port}))
    first = _serve(short_tmp, None, "--config", str(config))
    second: ServeProcess | None = None
    try:
        watcher.wait("online", 90)
        requester.connect(10)
        topic = "katago/dev-kill/analysis/request"
        corrs = [requester.send(topic, {**QUERY, "id": f"k{i}", "maxVisits": 100}) for i in range(5)]
        deadline = time.monotonic() + 20
        while watcher.health.get("mqtt", {}).get("accepted", 0) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        accepted = watcher.health["mqtt"]["accepted"]
        first.kill()  # SIGKILL: no clean-up at all
        assert accepted == 5 and not any(requester.pending(c).done.is_set() for c in corrs)
        write_config("fake")
        second = _serve(short_tmp, None, "--config", str(config))
        finals = [requester.wait(c, 90).responses[-1] for c in corrs]
        print(f"real daemon, kill -9: {accepted} accepted -> {len(finals)} answered by the next daemon")
        assert [(r["id"], r["isDuringSearch"]) for r in finals] == [(f"k{i}", False) for i in range(5)]
    finally:
        requester.close()
        watcher.close()
        first.kill()
        if second is not None:
            second.kill()
