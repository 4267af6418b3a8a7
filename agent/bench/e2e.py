"""End-to-end query latency through the transports, minus the time the analysis itself takes.

The agent's native engine (the network on ONNX Runtime when installed, else numpy) serves
1-visit queries three ways: straight into ``AnalysisService`` (the baseline), through the local
Unix socket, and, given a broker, through MQTT (request to the device topic, reply to the MQTT 5
response topic). Each transport's overhead is its latency minus the baseline's, per percentile.
Queries run one at a time so queueing never enters the figure.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.bench.positions import bench_positions
from agent.bench.timing import summarize
from agent.errors import RuntimeUnavailable, TransportError

QUERIES = 30


def _ms(samples: list[float]) -> dict[str, float]:
    t = summarize(samples)
    return {"p50_ms": round(t.median_s * 1e3, 3), "p95_ms": round(t.p95_s * 1e3, 3), "n": t.reps}


def _timed(send: Callable[[dict[str, Any]], None], query: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    send(query)
    return time.perf_counter() - t0


def run_e2e(model: Path, *, broker: str | None = None, queries: int = QUERIES) -> dict[str, Any]:
    from agent.app.startup import EngineRecipe, assemble_engine
    from agent.backends.registry import load_net
    from agent.protocol.service import AnalysisService
    from agent.search.params import SearchParams
    from agent.transports.local.unix_socket import UnixSocketTransport

    try:
        net = load_net(model, runtime="onnx")
    except RuntimeUnavailable:
        net = load_net(model, runtime="numpy")
    engine, _ = assemble_engine(net, EngineRecipe(params=SearchParams(max_visits=1), seed=1))
    service = AnalysisService(engine)
    positions = bench_positions()
    batch = [dict(positions[i % len(positions)].query(f"e2e-{i}", 1)) for i in range(queries)]
    result: dict[str, Any] = {"queries": queries, "visits": 1}

    def direct(q: dict[str, Any]) -> None:
        done = threading.Event()
        service.handle_query(q, lambda r: done.set() if not r.get("isDuringSearch") else None)
        if not done.wait(60):
            raise TimeoutError("no response from the analysis service within 60 s")

    paths: dict[str, Callable[[dict[str, Any]], None]] = {"direct": direct}
    try:
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="katago-edge-e2e-")))
            transport = UnixSocketTransport(service, tmp / "agent.sock")
            transport.start()
            stack.callback(transport.close)
            sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            sock.connect(str(tmp / "agent.sock"))
            paths["unix_socket"] = functools.partial(_via_socket, sock, sock.makefile("rb"))
            if broker:
                paths["mqtt"] = _mqtt_path(stack, service, broker)
            # Each query goes through every path back to back (NN cache cleared before each), so
            # machine-load drift hits all paths alike; overhead = path latency - direct latency.
            for q in batch[:3]:
                for send in paths.values():
                    send(q)
            samples: dict[str, list[float]] = {k: [] for k in paths}
            for q in batch:
                for name, send in paths.items():
                    engine.clear_cache()
                    samples[name].append(_timed(send, q))
    finally:
        engine.close(timeout=5.0)
        net.close()
    for name, values in samples.items():
        result[name] = _ms(values)
        if name != "direct":
            diffs = [v - d for v, d in zip(values, samples["direct"], strict=True)]
            over = summarize(diffs)
            result[name]["overhead_p50_ms"] = round(over.median_s * 1e3, 3)
            result[name]["overhead_p95_ms"] = round(over.p95_s * 1e3, 3)
    return result


def _via_socket(sock: socket.socket, reader: Any, query: dict[str, Any]) -> None:
    sock.sendall(json.dumps(query).encode() + b"\n")
    while True:
        line = reader.readline()
        if not line:
            raise TransportError("the socket closed before the final response")
        if not json.loads(line).get("isDuringSearch"):
            return


def _mqtt_path(stack: contextlib.ExitStack, service: Any, broker: str) -> Callable[[dict[str, Any]], None]:
    from agent.app.config import split_host_port
    from agent.transports.mqtt.client import MqttRequester
    from agent.transports.mqtt.settings import MqttSettings
    from agent.transports.mqtt.topics import FleetTopics
    from agent.transports.mqtt.transport import MqttTransport

    host, port = split_host_port(broker, 1883)
    settings = MqttSettings.model_validate(
        {"host": host, "port": port, "topic_prefix": "katago-edge-bench", "health_interval_s": 3600}
    )
    device = f"bench-{os.getpid()}"
    transport = MqttTransport(settings, device, service.handle_query)
    transport.start()
    stack.callback(transport.stop, clean=True)
    deadline = time.monotonic() + 10
    while not transport.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    if not transport.connected:
        raise TransportError(f"MQTT broker {broker} not reachable")
    requester = MqttRequester(settings)
    requester.connect()
    stack.callback(requester.close)
    topic = FleetTopics(settings.topic_prefix).device_request(device)

    def via_mqtt(query: dict[str, Any]) -> None:
        requester.request(topic, query, timeout=60.0)

    return via_mqtt
