"""Benchmark (not a test): MQTT round-trip overhead on loopback, request publish -> final reply.

    .venv/bin/python tests/transports/mqtt/bench_mqtt_roundtrip.py [N]

Starts a real mosquitto on a free loopback port and one agent (MqttTransport), then sends N
sequential requests from an MQTT 5 requester. Two services:

* ``instant``: answers inside ``handle_query`` -> the round trip is all transport overhead
  (paho + broker + JSON + dispatch + two loopback hops each way);
* ``native``: D's AnalysisService + native engine + fake network, maxVisits 1; the search time
  (handle_query call -> final emit, measured inside the agent) is subtracted per request.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mqtt_support import Mosquitto

from agent.transports.mqtt.client import MqttRequester
from agent.transports.mqtt.transport import MqttSettings, MqttTransport


class Timed:
    """Wraps a handle_query and records, per query id, the time from the call to the final emit."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.service_s: dict[str, float] = {}
        self.lock = threading.Lock()

    def __call__(self, query: dict[str, Any], emit: Any) -> None:
        t0 = time.perf_counter()
        qid = query["id"].split(":", 1)[1]

        def timed_emit(r: dict[str, Any]) -> None:
            if r.get("isDuringSearch") is False or "error" in r:
                with self.lock:
                    self.service_s[qid] = time.perf_counter() - t0
            emit(r)

        self.handle(query, timed_emit)


def instant(query: dict[str, Any], emit: Any) -> None:
    emit(
        {
            "id": query["id"],
            "turnNumber": 0,
            "isDuringSearch": False,
            "moveInfos": [],
            "rootInfo": {"visits": 1},
        }
    )


def native_service() -> Any:
    from agent.backends.fake import FakeNet
    from agent.engines.native import NativeEngine
    from agent.protocol.service import AnalysisService
    from agent.search.params import SearchParams

    engine = NativeEngine(
        FakeNet(),
        default_params=SearchParams(max_visits=1),
    )
    return AnalysisService(engine)


def percentiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=100)
    return {
        "p50_ms": round(1000 * q[49], 3),
        "p95_ms": round(1000 * q[94], 3),
        "p99_ms": round(1000 * q[98], 3),
    }


def run(broker: Mosquitto, handle: Any, n: int, label: str) -> dict[str, Any]:
    timed = Timed(handle)
    settings = MqttSettings(host="127.0.0.1", port=broker.port, health_interval_s=60)
    agent = MqttTransport(settings, f"bench-{label}", timed)
    agent.start()
    agent.wait_connected(10)
    req = MqttRequester(settings)
    req.connect(10)
    query = {"moves": [["B", "D4"]], "rules": "chinese", "komi": 7.5, "boardXSize": 9, "boardYSize": 9}
    overhead = []
    try:
        for i in range(n + 20):
            qid = f"b{i}"
            p = req.wait(req.send(agent.topics.request, {**query, "id": qid}), 10)
            rtt = (p.finished or 0) - p.sent
            if i >= 20:  # warm-up
                overhead.append(rtt - timed.service_s.get(qid, 0.0))
    finally:
        req.close()
        agent.stop()
    service = sorted(timed.service_s.values())
    return {
        "service": label,
        "n": n,
        **percentiles(overhead),
        "service_p50_ms": round(1000 * statistics.median(service), 3),
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    with tempfile.TemporaryDirectory() as d:
        broker = Mosquitto(Path(d))
        broker.start()
        try:
            results = [run(broker, instant, n, "instant")]
            svc = native_service()
            try:
                results.append(run(broker, svc.handle_query, n, "native"))
            finally:
                svc.close()
        finally:
            broker.stop()
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    machine = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    print(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
