"""MQTT message handling as plain functions: no paho here, so all of it is testable without a broker.

A request arrives as an :class:`Incoming` (what paho gave us, copied into plain types) and is
decoded by :func:`decode_request` into either a :class:`Request` (a KataGo query plus where to
reply) or a :class:`Rejection` (a KataGo-shaped error and, when one exists, where to send it). The
payload is decoded once, by the protocol's ``decode`` (size, UTF-8, nesting bounded).

Where replies go:

* MQTT 5: the request's **Response Topic** property; every reply carries the request's
  **Correlation Data** unchanged.
* MQTT 3.1.1 fallback (no properties): the query JSON may carry ``"replyTopic": "<topic>"``; the key
  is removed before the query reaches the analysis service (KataGo would warn about an unknown
  field). If both exist, the Response Topic wins. Replies are matched by the query ``id``.
* Neither: the request cannot be answered; it is dropped and counted (``no_reply_topic``).

Errors follow KataGo's analysis-engine shapes: ``{"error": MSG}`` when no id could be read,
``{"id": ID, "error": MSG}`` (optionally with ``"field"``) otherwise.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from agent.engines.base import Response
from agent.errors import UndecodableRequest
from agent.protocol.decode import decode, not_an_object
from agent.protocol.query import finals_expected
from agent.transports.mqtt.topics import check_publish_topic

__all__ = [
    "REPLY_TOPIC_KEY",
    "Ack",
    "Incoming",
    "RecentKeys",
    "Rejection",
    "ReplyCheck",
    "ReplyTo",
    "Request",
    "Response",
    "decode_request",
    "encode",
    "error_response",
    "finals_expected",
    "is_terminal",
    "reply_topic_problem",
    "status_payload",
]

REPLY_TOPIC_KEY = "replyTopic"
"""Payload key naming the reply topic for MQTT 3.1.1 clients (no Response Topic property)."""

Ack = Callable[[], None]
"""Acknowledges one received QoS 1 request to the broker (MQTT PUBACK); called exactly once."""


@dataclass(frozen=True)
class ReplyTo:
    """Where the replies of one request go."""

    topic: str
    correlation: bytes | None = None


@dataclass(frozen=True)
class Incoming:
    """One received PUBLISH, in plain types (the transport copies it out of paho's message)."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation: bytes | None = None
    expiry_s: int | None = None  # remaining Message Expiry Interval as forwarded by the broker
    received: float = field(default_factory=time.monotonic)
    ack: Ack | None = None  # the PUBACK, sent once the request's final reply reached the broker


@dataclass(frozen=True)
class Request:
    """A decoded analysis query and its reply target."""

    query: dict[str, Any]
    reply: ReplyTo
    received: float
    deadline: float | None  # monotonic time after which the request has expired
    size: int = 0  # payload bytes, for the dispatcher's memory budget

    @property
    def query_id(self) -> str:
        return str(self.query["id"])

    @property
    def dedup_key(self) -> Hashable:
        """Same requester (reply topic + correlation data) and same query id = same request."""
        return (self.reply.topic, self.reply.correlation, self.query_id)

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline


@dataclass(frozen=True)
class Rejection:
    """A request that will not be analysed: the error to send (if ``reply`` exists) and a counter."""

    error: Response
    reply: ReplyTo | None
    counter: str  # "oversize" | "malformed" | "no_reply_topic"


def error_response(message: str, query_id: str | None = None, field_name: str | None = None) -> Response:
    """A KataGo-shaped error object."""
    out: Response = {}
    if query_id is not None:
        out["id"] = query_id
    if field_name is not None:
        out["field"] = field_name
    out["error"] = message
    return out


ReplyCheck = Callable[[str], str | None]


def reply_topic_problem(topic: str, reply_check: ReplyCheck | None = None) -> str | None:
    """Why replies cannot go to ``topic`` (wildcards, ``$``, or what ``reply_check`` refuses), or None."""
    why = check_publish_topic(topic)
    if why is None and reply_check is not None:
        why = reply_check(topic)
    return why


def _reply_target(msg: Incoming, reply_check: ReplyCheck | None) -> ReplyTo | None:
    if msg.response_topic is None or reply_topic_problem(msg.response_topic, reply_check) is not None:
        return None
    return ReplyTo(msg.response_topic, msg.correlation)


def decode_request(
    msg: Incoming, max_payload_bytes: int, reply_check: ReplyCheck | None = None
) -> Request | Rejection:
    """Decode one request payload strictly; never raises for any payload.

    ``reply_check(topic)`` may veto reply topics (the transport refuses its own prefix's status,
    health and request topics)."""
    reply = _reply_target(msg, reply_check)
    size = len(msg.payload)
    try:
        obj = decode(msg.payload, max_payload_bytes)
    except UndecodableRequest as exc:
        if exc.kind == "oversize":
            return Rejection(error_response(str(exc)), reply, "oversize")
        message = f"payload is not valid UTF-8: {exc.detail}" if exc.kind == "utf8" else str(exc)
        return Rejection(error_response(message), reply, "malformed")
    if not isinstance(obj, dict):
        return Rejection(error_response(not_an_object(obj)), reply, "malformed")
    if REPLY_TOPIC_KEY in obj:
        fallback = obj.pop(REPLY_TOPIC_KEY)
        if reply is None:
            why = reply_topic_problem(fallback, reply_check) if isinstance(fallback, str) else "not a string"
            if why is not None:
                # Nowhere valid to reply to: the error cannot be delivered.
                return Rejection(
                    error_response(f'"{REPLY_TOPIC_KEY}" unusable: {why}'), None, "no_reply_topic"
                )
            reply = ReplyTo(fallback, None)
    qid = obj.get("id")
    if not isinstance(qid, str):
        return Rejection(error_response('Request must have a string "id" field'), reply, "malformed")
    if reply is None:
        return Rejection(error_response("no reply topic", qid), None, "no_reply_topic")
    deadline = None if msg.expiry_s is None else msg.received + msg.expiry_s
    return Request(obj, reply, msg.received, deadline, size)


def is_terminal(query: dict[str, Any], response: Response) -> bool | None:
    """Classify one response of ``query``: True ends the request, False is one final of several,
    None is not final (a partial result or a warning)."""
    if "error" in response:
        return True
    if "warning" in response and "isDuringSearch" not in response:
        return None
    if "action" in query:
        return True
    if response.get("isDuringSearch") is True:
        return None
    return False


class RecentKeys:
    """Bounded memory of recently seen request keys (LRU, with a time to live), for idempotency.

    QoS 1 means a request can arrive twice (redelivery after a reconnect, or a publisher retry);
    the second copy must not be analysed again.
    """

    def __init__(self, capacity: int = 4096, ttl_s: float = 600.0) -> None:
        self._capacity = capacity
        self._ttl = ttl_s
        self._seen: OrderedDict[Hashable, float] = OrderedDict()

    def check_and_add(self, key: Hashable, now: float) -> bool:
        """True if ``key`` was seen within the time to live; records it otherwise."""
        while self._seen:
            oldest_key, t = next(iter(self._seen.items()))
            if now - t <= self._ttl and len(self._seen) < self._capacity:
                break
            del self._seen[oldest_key]
        if key in self._seen:
            return True
        self._seen[key] = now
        return False

    def discard(self, key: Hashable) -> None:
        self._seen.pop(key, None)

    def __len__(self) -> int:
        return len(self._seen)


def status_payload(state: str, device_id: str, since: float, info: dict[str, Any]) -> dict[str, Any]:
    """The retained ``<p>/<device>/status`` document.

    ``state`` is ``online`` (published on every connect), ``offline`` (the last will, sent by the
    broker when the connection is lost) or ``stopped`` (clean shutdown). ``info`` adds agent
    version, profile, engine, runtime and network as the daemon knows them.
    """
    out: dict[str, Any] = {"state": state, "device": device_id, "since": round(since, 3)}
    for key, value in info.items():
        out.setdefault(key, value)
    return out


def encode(obj: Any) -> bytes:
    """Compact JSON as UTF-8; NaN/Infinity (not JSON) become null so that no reply is unreadable,
    and values JSON cannot hold (paths, enums in a health snapshot) become their ``str``."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False, default=str).encode("utf-8")
    except ValueError:
        return json.dumps(_strip_nan(obj), separators=(",", ":"), default=str).encode("utf-8")


def _strip_nan(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strip_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_strip_nan(v) for v in obj]
    return obj
