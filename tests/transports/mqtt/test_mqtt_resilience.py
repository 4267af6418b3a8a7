"""The agent under stress: broker restarts, SIGKILL, clean stop, fuzzed payloads."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from mqtt_support import StubService, read_retained, wait_for

HERE = Path(__file__).resolve().parent
QUERY = {"id": "q", "moves": [], "rules": "chinese", "komi": 7.5, "boardXSize": 9, "boardYSize": 9}


def start_agent_process(port: int, device: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "agent_main.py"), str(port), device],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(HERE)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
    return proc


def status_of(port: int, topic: str, timeout: float = 1.0) -> str | None:
    """The retained status; None after ``timeout`` without one (the first one ends the wait)."""
    msg = read_retained(port, [topic], timeout=timeout).get(topic)
    return json.loads(msg.payload)["state"] if msg else None


def test_resilience__sigkill_gives_offline_through_last_will(broker):
    proc = start_agent_process(broker.port, "killme")
    topic = "katago/killme/status"
    try:
        assert wait_for(lambda: status_of(broker.port, topic) == "online", 10)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert wait_for(lambda: status_of(broker.port, topic) == "offline", 10)
    finally:
        proc.kill()
        proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def test_resilience__sigterm_gives_stopped(broker):
    proc = start_agent_process(broker.port, "calm")
    topic = "katago/calm/status"
    try:
        assert wait_for(lambda: status_of(broker.port, topic) == "online", 10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert status_of(broker.port, topic, timeout=10) == "stopped"
        time.sleep(0.3)  # the broker must not publish the will after a clean DISCONNECT
        assert status_of(broker.port, topic, timeout=10) == "stopped"
    finally:
        proc.kill()
        proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def test_resilience__broker_restart_during_burst_loses_no_accepted_request(
    broker, settings, make_agent, make_requester
):
    config = settings.model_copy(update={"max_queue": 64})  # the burst must not be refused as busy
    agent = make_agent("dev1", StubService(delay_s=0.01), config=config)
    req = make_requester(client_id="burst-client", persistent=True)
    corrs = []
    for i in range(50):
        corrs.append(req.send(agent.topics.request, {**QUERY, "id": f"r{i}"}, expiry_s=120))
        if i == 20:
            broker.stop()  # SIGTERM: mosquitto writes its persistence file
        if i == 35:
            broker.start()
        time.sleep(0.02)
    for i, c in enumerate(corrs):
        p = req.wait(c, 30)
        assert [r["id"] for r in p.responses] == [f"r{i}"]
    assert agent.wait_connected(5)
    assert wait_for(lambda: status_of(broker.port, agent.topics.status) == "online", 10)
    stats = agent.stats()
    assert stats["answered"] == 50 and stats["disconnects"] >= 1 and stats["connects"] >= 2


def fuzz_payloads(n: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    good = json.dumps({**QUERY, "id": "x"}).encode()
    makers = [
        lambda: rng.randbytes(rng.randint(0, 200)),
        lambda: good[: rng.randint(0, len(good) - 1)],
        lambda: b"\xff\xfe" + good,
        lambda: json.dumps(rng.choice([1, "s", None, [], [1, 2], True, 3.5])).encode(),
        lambda: json.dumps({"id": rng.choice([1, None, [], {}, True])}).encode(),
        lambda: json.dumps({**QUERY, "id": "m", "moves": rng.choice([1, "D4", None, {}])}).encode(),
        lambda: b"[" * 5000 + b"]" * 5000,
        lambda: b"x" * 70000,
        lambda: json.dumps({"id": "nan", "moves": [], "komi": float("nan")}).encode(),
        lambda: json.dumps({"id": "t", "action": rng.choice(["terminate", "bogus", 5])}).encode(),
    ]
    return [rng.choice(makers)() for _ in range(n)]


def test_resilience__1000_fuzzed_payloads_never_crash_and_good_requests_answered(
    make_agent, make_requester, real_service
):
    from agent.transports.mqtt.transport import publish_properties

    agent = make_agent("dev1", real_service)
    req = make_requester()
    client = req._client
    good = []
    for i, payload in enumerate(fuzz_payloads(1000)):
        with_reply = i % 2 == 0
        props = publish_properties(60, os.urandom(8), req.reply_topic if with_reply else None)
        info = client.publish(agent.topics.request, payload, qos=1, properties=props)
        # paho's outgoing queue holds 1000 messages (outgoing_queue): pace the burst so that none
        # is refused on the sending side, which would be the test's loss, not the agent's
        assert info.rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS, info.rc
        if i % 100 == 99:
            info.wait_for_publish(10)
        if i % 50 == 0:
            good.append(
                (f"good{i}", req.send(agent.topics.request, {**QUERY, "id": f"good{i}", "maxVisits": 2}))
            )
    resent = 0
    for qid, c in good:
        for _attempt in range(10):
            p = req.wait(c, 30)
            last = p.responses[-1]
            # a flooded agent may refuse with "busy: ... retry later" (its queue limit), as
            # documented; a client retries, and so does this one
            if not str(last.get("error", "")).startswith("busy:"):
                break
            time.sleep(0.2)
            c = req.send(agent.topics.request, {**QUERY, "id": qid, "maxVisits": 2})
            resent += 1
        assert last["id"] == qid and last.get("isDuringSearch") is False, p.responses
    stats = wait_for(lambda: (s := agent.stats())["received"] == 1000 + len(good) + resent and s, 20)
    assert agent.connected
    dropped = stats["malformed"] + stats["oversize"] + stats["no_reply_topic"]
    assert dropped + stats["accepted"] + stats["duplicates"] + stats["busy"] == stats["received"]
    assert stats["oversize"] > 0 and stats["malformed"] > 0 and stats["no_reply_topic"] > 0
    assert stats["internal_errors"] == 0
    # Every fuzzed payload that named a reply topic (500 of them) got at least one reply there.
    assert wait_for(lambda: req.unmatched >= 500, 10)


def test_resilience__requests_sent_while_agent_away_are_served_when_it_returns(make_agent, make_requester):
    first = make_agent("dev1")
    first.stop(clean=True)  # a DISCONNECT keeps the session: Session Expiry Interval > 0
    req = make_requester()
    corrs = [req.send(first.topics.request, {**QUERY, "id": f"w{i}"}, expiry_s=60) for i in range(5)]
    time.sleep(0.2)
    assert not any(req.pending(c).done.is_set() for c in corrs)
    make_agent("dev1")  # same device id -> same client id -> same session
    for i, c in enumerate(corrs):
        assert [r["id"] for r in req.wait(c, 10).responses] == [f"w{i}"]


def test_resilience__redelivered_duplicate_is_not_analysed_twice(make_agent, make_requester):
    service = StubService()
    agent = make_agent("dev1", service)
    req = make_requester()
    corr = req.send(agent.topics.request, {**QUERY, "id": "once"})
    req.wait(corr, 30)
    req.send(agent.topics.request, {**QUERY, "id": "once"}, correlation=corr)
    other = req.send(agent.topics.request, {**QUERY, "id": "once"})  # new correlation: a new request
    req.wait(other, 30)
    assert len(service.seen) == 2 and all(i.endswith(":once") for i in service.seen)
    assert len(set(service.seen)) == 2  # each request its own (unguessable) internal id
    assert wait_for(lambda: agent.stats()["duplicates"] == 1)


def test_resilience__agent_started_before_the_broker_connects_when_it_comes(make_agent, broker):
    broker.stop()
    agent = make_agent("early", connect=False)
    time.sleep(0.5)
    assert not agent.connected
    broker.start()
    assert agent.wait_connected(10)
    assert wait_for(lambda: status_of(broker.port, agent.topics.status) == "online", 10)


def test_resilience__while_disconnected_partials_beyond_the_bound_drop_and_finals_never(
    broker, settings, make_agent, make_requester
):
    from agent.transports.mqtt.handlers import Incoming

    service = StubService(delay_s=0.03, partials=2)
    agent = make_agent("dev1", service, config=settings.model_copy(update={"outgoing_queue": 5}))
    req = make_requester(client_id="queue-client", persistent=True)
    broker.stop()
    wait_for(lambda: not agent.connected, 5)
    for i in range(10):  # as if these had been received just before the connection dropped
        payload = json.dumps({**QUERY, "id": f"o{i}"}).encode()
        agent.dispatcher.on_message(Incoming(agent.topics.request, payload, req.reply_topic, bytes([i])))
    wait_for(lambda: agent.stats()["answered"] == 10, 10)
    dropped = agent.stats()["dropped_outgoing"]
    assert dropped >= 15  # 20 partials, at most 5 replies held: partials beyond that are dropped
    broker.start()
    assert agent.wait_connected(10)
    wait_for(lambda: req.unmatched == 30 - dropped, 10)
    time.sleep(0.3)
    assert req.unmatched == 30 - dropped  # every final (10) and the partials held were delivered
