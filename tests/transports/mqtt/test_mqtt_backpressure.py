"""Nothing lost, nobody else's (issue #23): back-pressure instead of drops, acknowledged after the
answer, every request ends with a reply, and a requester reaches only its own queries.

Real mosquitto on 127.0.0.1, real agents (in-process and as a process killed with SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from mqtt_support import StubService, read_retained, wait_for

from agent.transports.mqtt.dispatch import RequestDispatcher
from agent.transports.mqtt.handlers import Incoming

HERE = Path(__file__).resolve().parent
QUERY = {"id": "q", "moves": [], "rules": "chinese", "komi": 7.5, "boardXSize": 9, "boardYSize": 9}


def test_backpressure__burst_of_3000_gets_3000_replies_none_dropped(make_agent, make_requester):
    agent = make_agent("dev1", StubService())
    req = make_requester()
    n = 3000
    t0 = time.monotonic()
    corrs = [req.send(agent.topics.request, {**QUERY, "id": f"b{i}"}, expiry_s=300) for i in range(n)]
    for c in corrs:
        req.wait(c, 120)
    elapsed = time.monotonic() - t0
    finals = sum(1 for c in corrs if req.pending(c).responses[-1].get("isDuringSearch") is False)
    stats = wait_for(lambda: (s := agent.stats())["acked"] == n and s, 10)
    print(f"burst {n} -> {finals} final replies in {elapsed:.1f} s; agent stats {stats}")
    assert finals == n
    assert stats["dropped_outgoing"] == 0 and stats["busy"] == 0
    assert stats["received"] == stats["accepted"] == stats["answered"] == stats["replies"] == n


def test_backpressure__duplicate_analyze_turns_give_one_final_and_the_next_request_runs_at_once(
    make_agent, make_requester, real_service, settings
):
    agent = make_agent("dev1", real_service, config=settings.model_copy(update={"max_concurrent": 1}))
    req = make_requester()
    query = {**QUERY, "moves": [["B", "E5"]], "maxVisits": 3}
    dup = req.request(agent.topics.request, {**query, "id": "dup", "analyzeTurns": [0, 0, 0]}, timeout=60)
    assert [(r["turnNumber"], r["isDuringSearch"]) for r in dup] == [(0, False)]
    # at once: a slot held for the duplicates' finals would be freed only by request_timeout_s (600 s)
    nxt = req.request(agent.topics.request, {**query, "id": "next"}, timeout=60)
    assert nxt[-1]["id"] == "next" and nxt[-1]["turnNumber"] == 1
    empty = req.request(agent.topics.request, {**query, "id": "none", "analyzeTurns": []}, timeout=60)
    assert empty == [{"id": "none", "field": "analyzeTurns", "error": "no turns to analyze (empty array)"}]
    assert agent.stats()["timeouts"] == 0


def test_backpressure__timeout_terminates_the_search_replies_an_error_and_frees_the_slot(
    make_agent, make_requester, make_service, settings
):
    service = make_service(delay=0.005)
    config = settings.model_copy(update={"max_concurrent": 1, "request_timeout_s": 1.0})
    agent = make_agent("dev1", service, config=config)
    req = make_requester()
    t0 = time.monotonic()
    long = req.request(agent.topics.request, {**QUERY, "id": "long", "maxVisits": 1_000_000}, timeout=10)
    took = time.monotonic() - t0
    assert long == [
        {"id": "long", "error": "request timed out after 1 s (request_timeout_s); search terminated"}
    ]
    nxt = req.request(agent.topics.request, {**QUERY, "id": "next", "maxVisits": 2}, timeout=10)
    assert nxt[-1]["id"] == "next" and nxt[-1]["isDuringSearch"] is False
    engine = wait_for(lambda: (e := service.stats()["engine"])["terminated"] >= 1 and e, 5)
    print(f"timeout: error after {took:.2f} s, engine {engine}")
    assert agent.stats()["timeouts"] == 1 and req.unmatched == 0  # no late final for "long"


def _start_agent(port: int, device: str, delay: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "agent_main.py"), str(port), device, str(delay)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(HERE)},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _stop(proc: subprocess.Popen[str], sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def test_backpressure__kill_9_with_5_accepted_requests_all_answered_after_restart(broker, make_requester):
    req = make_requester()
    topic = "katago/victim/analysis/request"
    health = "katago/victim/health"
    first = _start_agent(broker.port, "victim", delay=30.0)  # none answered before the kill
    try:
        status = "katago/victim/status"  # published after SUBSCRIBE: the subscription exists
        wait_for(lambda: status in read_retained(broker.port, [status], timeout=0.5), 30)
        corrs = [req.send(topic, {**QUERY, "id": f"k{i}"}, expiry_s=120) for i in range(5)]

        def accepted() -> int:
            msg = read_retained(broker.port, [health], timeout=1.0).get(health)
            return int(json.loads(msg.payload)["mqtt"]["accepted"]) if msg else 0

        seen = wait_for(lambda: accepted() == 5 and 5, 30)  # a loaded 2-core machine can be slow
        _stop(first, signal.SIGKILL)
        assert not any(req.pending(c).done.is_set() for c in corrs)
    finally:
        _stop(first, signal.SIGKILL)
    second = _start_agent(broker.port, "victim", delay=0.0)
    try:
        answered = [req.wait(c, 20).responses[-1] for c in corrs]
    finally:
        _stop(second, signal.SIGTERM)
    print(f"kill -9: {seen} accepted -> {sum(r.get('isDuringSearch') is False for r in answered)} answered")
    assert [r["id"] for r in answered] == [f"k{i}" for i in range(5)]
    assert all(r["isDuringSearch"] is False for r in answered)


def test_backpressure__terminate_reaches_only_the_requesters_own_queries():
    gates: dict[str, threading.Event] = {}
    seen: list[dict] = []
    replies: list[tuple[str, dict]] = []

    def handle(query, emit):
        seen.append(query)
        if query.get("action") == "terminate":
            if query["terminateId"] in gates:
                gates[query["terminateId"]].set()
            emit({"id": query["id"], "action": "terminate", "terminateId": query["terminateId"]})
            return
        gate = gates.setdefault(query["id"], threading.Event())
        threading.Thread(
            target=lambda: (gate.wait(60), emit({"id": query["id"], "isDuringSearch": False}))
        ).start()

    def publish(reply, response, then=None):
        replies.append((reply.topic, response))
        if then is not None:
            then()

    d = RequestDispatcher(handle, publish, max_concurrent=2, max_queue=4)
    d.start()

    def send(payload: dict, who: str) -> None:
        d.on_message(Incoming("katago/d/analysis/request", json.dumps(payload).encode(), who, os.urandom(4)))

    try:
        send({"id": "a", "moves": []}, "client/A")
        wait_for(lambda: len(gates) == 1, 30)
        victim = next(iter(gates))
        assert victim.endswith(":a") and len(victim.split(":")[0]) >= 24  # not guessable
        send({"id": "t1", "action": "terminate", "terminateId": victim}, "client/B")
        send({"id": "t2", "action": "terminate", "terminateId": "a"}, "client/B")
        send({"id": "t3", "action": "terminate_all"}, "client/B")
        wait_for(lambda: len([r for t, r in replies if t == "client/B"]) == 3, 30)
        assert not gates[victim].is_set() and d.stats()["answered"] == 3  # A's search still runs
        assert [r for t, r in replies if t == "client/B"] == [
            {"id": "t1", "action": "terminate", "terminateId": victim},
            {"id": "t2", "action": "terminate", "terminateId": "a"},
            {"id": "t3", "action": "terminate_all"},
        ]
        send({"id": "t4", "action": "terminate_all"}, "client/A")
        wait_for(lambda: ("client/A", {"id": "a", "isDuringSearch": False}) in replies, 30)
        assert gates[victim].is_set()
    finally:
        for gate in gates.values():
            gate.set()
        d.stop(timeout=2)


def test_backpressure__held_requests_are_served_round_robin_over_requesters():
    order: list[str] = []

    def handle(query, emit):
        order.append(query["id"].rsplit(":", 1)[1])
        emit({"id": query["id"], "isDuringSearch": False})

    def publish(reply, response, then=None):
        if then is not None:
            then()

    d = RequestDispatcher(handle, publish, max_concurrent=1, max_queue=100)
    for i in range(50):  # A floods before the worker starts; then B asks once
        d.on_message(
            Incoming("k/d/analysis/request", json.dumps({"id": f"a{i}"}).encode(), "client/A", b"%d" % i)
        )
    d.on_message(Incoming("k/d/analysis/request", b'{"id": "b0"}', "client/B", b"b"))
    d.start()
    try:
        wait_for(lambda: len(order) == 51, 30)
    finally:
        d.stop(timeout=2)
    assert order.index("b0") == 1  # second, not 51st
    assert [x for x in order if x != "b0"] == [f"a{i}" for i in range(50)]


def test_backpressure__one_requester_cannot_take_the_whole_backlog():
    """A flooding requester is refused ``busy`` at its share of the backlog; another requester's
    request is still taken (and answered) while the flood is held."""
    replies: dict[str, list[dict]] = {"client/A": [], "client/B": []}

    def handle(query, emit):
        emit({"id": query["id"], "isDuringSearch": False})

    def publish(reply, response, then=None):
        replies[reply.topic].append(response)
        if then is not None:
            then()

    payload_size = len(json.dumps({"id": "a000"}).encode())
    d = RequestDispatcher(
        handle, publish, max_concurrent=1, max_queue=2, max_backlog_bytes=100 * payload_size,
        max_requester_share=0.5,
    )  # fmt: skip
    for i in range(80):  # held (the worker is not started): capacity 3, then A's share of 50 payloads
        d.on_message(
            Incoming("k/d/analysis/request", json.dumps({"id": f"a{i:03d}"}).encode(), "client/A", b"%d" % i)
        )
    d.on_message(Incoming("k/d/analysis/request", b'{"id": "b0"}', "client/B", b"b"))
    busy = [r for r in replies["client/A"] if "busy" in r.get("error", "")]
    assert len(busy) == 30  # 50 held by the share, 30 refused at once
    assert "this requester" in busy[0]["error"]
    assert replies["client/B"] == []  # B's request was taken, not refused
    d.start()
    try:
        wait_for(lambda: len(replies["client/B"]) == 1 and len(replies["client/A"]) == 80, 5)
    finally:
        d.stop(timeout=2)
    assert replies["client/B"] == [{"id": "b0", "isDuringSearch": False}]
    assert d.stats()["busy"] == 30


def test_backpressure__two_agents_with_one_client_id_say_so_instead_of_unspecified_error(
    make_agent, settings, caplog
):
    import logging

    caplog.set_level(logging.ERROR, logger="agent.transports.mqtt.transport")
    config = settings.model_copy(update={"reconnect_min_s": 1, "reconnect_max_s": 1})
    make_agent("twin", config=config)
    make_agent("twin", config=config, connect=False)  # takes the session: the two flap
    wait_for(lambda: "another client is probably using client id 'katago-edge-twin'" in caplog.text, 40)


def test_backpressure__every_final_of_a_multi_turn_request_is_marked_undroppable():
    marks: list[tuple[object, bool]] = []
    acks: list[str] = []

    def handle(query, emit):
        emit({"id": query["id"], "turnNumber": 0, "isDuringSearch": True})
        for turn in (0, 1, 2):
            emit({"id": query["id"], "turnNumber": turn, "isDuringSearch": False})

    def publish(reply, response, then=None):
        marks.append((response.get("turnNumber"), then is not None))
        if then is not None:
            then()

    d = RequestDispatcher(handle, publish)
    d.start()
    try:
        payload = json.dumps({"id": "g", "moves": [["B", "D4"], ["W", "Q16"]], "analyzeTurns": [0, 1, 2]})
        d.on_message(
            Incoming("k/d/analysis/request", payload.encode(), "r/t", b"c", ack=lambda: acks.append("g"))
        )
        wait_for(lambda: len(marks) == 4, 5)
    finally:
        d.stop(timeout=2)
    assert marks == [(0, False), (0, True), (1, True), (2, True)]  # the partial alone may wait or drop
    assert acks == ["g"]  # acknowledged once, with the last final
