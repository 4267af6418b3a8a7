"""Plain message handling (no broker, no paho): decoding, reply targets, idempotency, dispatch."""

from __future__ import annotations

import json
import threading
import time

import pytest

from agent.errors import ConfigError
from agent.transports.mqtt.dispatch import RequestDispatcher
from agent.transports.mqtt.handlers import (
    Incoming,
    RecentKeys,
    Rejection,
    ReplyTo,
    Request,
    decode_request,
    encode,
    finals_expected,
    is_terminal,
)
from agent.transports.mqtt.topics import DeviceTopics, FleetTopics, check_device_id

GOOD = json.dumps({"id": "a", "moves": []}).encode()


def msg(
    payload: bytes, reply: str | None = "r/t", corr: bytes | None = b"c", expiry: int | None = None
) -> Incoming:
    return Incoming("katago/d/analysis/request", payload, reply, corr, expiry, received=100.0)


@pytest.mark.parametrize(
    ("payload", "counter", "error_start"),
    [
        (b"x" * 1001, "oversize", "payload too large: 1001 bytes, limit 1000"),
        (b"\xff{}", "malformed", "payload is not valid UTF-8"),
        (b"{nope", "malformed", "[json.exception.parse_error]"),
        (b'{"id": "a", "komi": NaN}', "malformed", "[json.exception.parse_error] NaN is not valid JSON"),
        (b"[1, 2]", "malformed", "Request line was valid json but was not an object"),
        (b'{"id": 5}', "malformed", 'Request must have a string "id" field'),
    ],
)
def test_decode__bad_payloads_give_katago_shaped_errors(payload, counter, error_start):
    out = decode_request(msg(payload), max_payload_bytes=1000)
    assert isinstance(out, Rejection) and out.counter == counter
    assert out.error["error"].startswith(error_start) and "id" not in out.error
    assert out.reply == ReplyTo("r/t", b"c")


def test_decode__deep_nesting_is_an_error_not_a_crash():
    out = decode_request(msg(b"[" * 30000 + b"]" * 30000), 65536)
    assert isinstance(out, Rejection) and out.counter == "malformed"
    assert out.error["error"].startswith("[json.exception.parse_error]")


def test_decode__good_request_with_response_topic_and_expiry():
    out = decode_request(msg(GOOD, expiry=30), 1000)
    assert isinstance(out, Request)
    assert out.query == {"id": "a", "moves": []} and out.reply == ReplyTo("r/t", b"c")
    assert out.deadline == 130.0 and not out.expired(129.0) and out.expired(131.0)
    assert out.dedup_key == ("r/t", b"c", "a")


def test_decode__mqtt311_reply_topic_key_is_used_and_stripped():
    payload = json.dumps({"id": "a", "moves": [], "replyTopic": "old/client"}).encode()
    out = decode_request(msg(payload, reply=None, corr=None), 1000)
    assert isinstance(out, Request) and out.reply == ReplyTo("old/client", None)
    assert "replyTopic" not in out.query


def test_decode__response_topic_wins_over_payload_key():
    payload = json.dumps({"id": "a", "replyTopic": "old/client"}).encode()
    out = decode_request(msg(payload), 1000)
    assert isinstance(out, Request) and out.reply.topic == "r/t" and "replyTopic" not in out.query


@pytest.mark.parametrize("reply", [None, "a/+/b", "$SYS/x", ""])
def test_decode__no_usable_reply_topic_is_dropped(reply):
    out = decode_request(msg(GOOD, reply=reply), 1000)
    assert isinstance(out, Rejection) and out.counter == "no_reply_topic" and out.reply is None


@pytest.mark.parametrize(
    "reply",
    [
        "katago/dev-a/status",
        "katago/dev-a/health",
        "katago/dev-a/analysis/request",
        "katago/fleet/analysis/request",
    ],
)
def test_decode__reply_to_status_health_or_request_topics_is_refused(reply):
    check = FleetTopics("katago").reply_conflict
    out = decode_request(msg(GOOD, reply=reply), 1000, check)
    assert isinstance(out, Rejection) and out.counter == "no_reply_topic"
    fallback = json.dumps({"id": "a", "replyTopic": reply}).encode()
    assert decode_request(msg(fallback, reply=None), 1000, check).counter == "no_reply_topic"
    assert isinstance(decode_request(msg(GOOD, reply="katago/clients/me/reply"), 1000, check), Request)


def test_decode__wildcard_reply_topic_in_payload_is_dropped():
    payload = json.dumps({"id": "a", "replyTopic": "x/#"}).encode()
    out = decode_request(msg(payload, reply=None), 1000)
    assert isinstance(out, Rejection) and out.counter == "no_reply_topic"


@pytest.mark.parametrize(
    ("query", "n"),
    [
        ({"id": "a"}, 1),
        ({"id": "a", "analyzeTurns": [0, 3, 5]}, 3),
        ({"id": "a", "analyzeTurns": [0, 0, 0]}, 1),  # KataGo analyses a turn once (a flag per turn)
        ({"id": "a", "analyzeTurns": [2, 0, 2, 0]}, 2),
        ({"id": "a", "analyzeTurns": []}, 0),  # KataGo answers nothing
        ({"id": "a", "analyzeTurns": "x"}, 1),  # one field error
        ({"id": "a", "action": "x"}, 1),
    ],
)
def test_finals_expected__one_per_distinct_analysed_turn(query, n):
    assert finals_expected(query) == n


@pytest.mark.parametrize(
    ("response", "terminal"),
    [
        ({"id": "a", "isDuringSearch": True}, None),
        ({"id": "a", "field": "rules", "warning": "converted"}, None),
        ({"id": "a", "isDuringSearch": False}, False),
        ({"id": "a", "error": "Illegal move 1: D4"}, True),
    ],
)
def test_is_terminal__classifies_responses(response, terminal):
    assert is_terminal({"id": "a", "moves": []}, response) is terminal


def test_recent_keys__remembers_within_ttl_and_capacity():
    keys = RecentKeys(capacity=2, ttl_s=10)
    assert not keys.check_and_add("a", 0) and keys.check_and_add("a", 5)
    assert not keys.check_and_add("b", 6) and not keys.check_and_add("c", 7)  # "a" evicted (capacity)
    assert not keys.check_and_add("a", 8)
    assert not keys.check_and_add("b", 30)  # expired


def test_encode__nan_becomes_null_and_odd_values_strings():
    assert json.loads(encode({"w": float("nan"), "l": [float("inf"), 1.0]})) == {"w": None, "l": [None, 1.0]}
    from pathlib import Path

    assert json.loads(encode({"p": Path("/models/x.onnx")})) == {"p": "/models/x.onnx"}


def test_topics__layout_and_reserved_ids():
    t = DeviceTopics("katago", "pi-4")
    assert (t.status, t.health, t.request) == (
        "katago/pi-4/status",
        "katago/pi-4/health",
        "katago/pi-4/analysis/request",
    )
    f = FleetTopics("site/a")
    assert f.shared_fleet_request("g") == "$share/g/site/a/fleet/analysis/request"
    assert f.split_device_topic("site/a/pi/health") == ("pi", "health")
    assert f.split_device_topic("site/a/fleet/analysis/request") is None
    for bad in ("fleet", "a/b", "a+", "#", "$x", ""):
        with pytest.raises(ConfigError):
            check_device_id(bad)


class Recorder:
    def __init__(self) -> None:
        self.replies: list[tuple[ReplyTo, dict]] = []
        self.lock = threading.Lock()

    def __call__(self, reply: ReplyTo, response: dict, then=None) -> None:
        with self.lock:
            self.replies.append((reply, response))
        if then is not None:
            then()  # the broker "has" the reply at once


def test_dispatch__ids_are_scoped_per_requester_and_terminate_reaches_only_own_query():
    running: dict[str, threading.Event] = {}
    seen: list[dict] = []

    def handle(query, emit):
        seen.append(query)
        if query.get("action") == "terminate":
            running[query["terminateId"]].set()
            emit({"id": query["id"], "action": "terminate", "terminateId": query["terminateId"]})
            return
        ev = running.setdefault(query["id"], threading.Event())
        threading.Thread(
            target=lambda: (ev.wait(60), emit({"id": query["id"], "isDuringSearch": False}))
        ).start()

    rec = Recorder()
    d = RequestDispatcher(handle, rec, max_concurrent=2, max_queue=4)
    d.start()
    try:
        d.on_message(msg(GOOD, reply="client/A", corr=b"1"))
        d.on_message(msg(GOOD, reply="client/B", corr=b"2"))
        deadline = time.monotonic() + 5
        while len(running) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        internal_ids = [q["id"] for q in seen]
        assert len(set(internal_ids)) == 2 and all(i.endswith(":a") for i in internal_ids)
        d.on_message(
            msg(json.dumps({"id": "t", "action": "terminate", "terminateId": "a"}).encode(), reply="client/B")
        )
        deadline = time.monotonic() + 5
        while d.stats()["answered"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        to_b = [r for t, r in rec.replies if t.topic == "client/B"]
        assert {"id": "t", "action": "terminate", "terminateId": "a"} in to_b
        assert {"id": "a", "isDuringSearch": False} in to_b
        assert not [r for t, r in rec.replies if t.topic == "client/A"]  # A's search still running
    finally:
        for ev in running.values():
            ev.set()
        d.stop(timeout=2)


def test_dispatch__service_exception_becomes_error_reply_and_is_counted():
    def handle(query, emit):
        raise RuntimeError("boom")

    rec = Recorder()
    d = RequestDispatcher(handle, rec)
    d.start()
    try:
        d.on_message(msg(GOOD))
        deadline = time.monotonic() + 5
        while not rec.replies and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rec.replies == [(ReplyTo("r/t", b"c"), {"id": "a", "error": "internal error: RuntimeError"})]
        assert d.stats()["internal_errors"] == 1
    finally:
        d.stop(timeout=1)


def test_dispatch__stop_aborts_queued_requests_with_error():
    """q0 runs (held until the stop has begun), q1 and q2 wait: the stop aborts those two."""
    gate = threading.Event()
    started: list[str] = []

    def handle(query, emit):
        started.append(query["id"])
        threading.Thread(
            target=lambda: (gate.wait(60), emit({"id": query["id"], "isDuringSearch": False}))
        ).start()

    rec = Recorder()
    d = RequestDispatcher(handle, rec, max_concurrent=1, max_queue=5)
    d.start()
    for i in range(3):
        d.on_message(msg(json.dumps({"id": f"q{i}", "moves": []}).encode(), corr=bytes([i])))
    deadline = time.monotonic() + 30
    while not started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(started) == 1  # one worker: q0 runs, the others are queued
    stopper = threading.Thread(target=d.stop, kwargs={"timeout": 30})
    stopper.start()
    deadline = time.monotonic() + 30
    while d.stats()["aborted"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()  # q0 ends: the stop waits for running requests
    stopper.join(60)
    assert not stopper.is_alive()
    errors = [r for _, r in rec.replies if "error" in r]
    assert all(e["error"] == "agent is stopping; request not analysed" for e in errors)
    assert d.stats()["aborted"] == len(errors) == 2
    assert {"id": "q0", "isDuringSearch": False} in [r for _, r in rec.replies]  # q0 was answered
