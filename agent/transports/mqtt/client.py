"""The requesting side of MQTT analysis: send KataGo queries to a device (or the fleet), collect replies.

Used by ``katago-edge query``, by the tests and by the round-trip benchmark. Each request carries
a fresh Correlation Data (16 random bytes) and the requester's own reply topic as Response Topic:
``<p>/clients/<user name>/reply`` when it logs in with a user name (the fleet ACL lets each user
read only that topic, see docs/mqtt.md), else ``<p>/clients/<client id>/reply``. Replies are
matched on the correlation data, so one requester can have many requests in flight; the
answering device's id (the replies' ``device`` User Property) is kept in ``Pending.devices``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.errors import TransportError
from agent.transports.mqtt.handlers import Response, encode, finals_expected, is_terminal
from agent.transports.mqtt.settings import MqttSettings
from agent.transports.mqtt.topics import FleetTopics
from agent.transports.mqtt.transport import (
    AUTH_REFUSED,
    DEVICE_PROPERTY,
    make_client,
    publish_properties,
    set_nodelay,
)

logger = logging.getLogger(__name__)


@dataclass
class Pending:
    """Replies collected for one request."""

    query: dict[str, Any]
    sent: float
    remaining: int
    responses: list[Response] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    finished: float | None = None
    on_response: Callable[[Response], None] | None = None
    devices: list[str] = field(default_factory=list)  # the "device" User Property of each reply


def refusal(reason: ReasonCode) -> str:
    """Why the broker refused a connection, with a hint when it refused the login."""
    why = f"connection refused: {reason}"
    if reason.value in AUTH_REFUSED:
        why += " (check user name and password)"
    return why


class CommandClient(ABC):
    """A command's own MQTT 5 connection (``query``, ``fleet``, ``fleet deploy``, the tests):
    ``connect`` returns once the broker acknowledged the subscriptions, or raises
    ``TransportError`` with the reason (login refused, no answer); ``close`` ends it.

    A subclass names its subscriptions and reads its messages (paho's network thread);
    ``last_message_at`` lets ``settle`` wait for the retained messages. The agent's own long-lived
    connection is :class:`~agent.transports.mqtt.transport.MqttTransport`."""

    def __init__(self, settings: MqttSettings, client_id: str, persistent: bool = False) -> None:
        self.settings = settings
        self.client_id = client_id
        self._persistent = persistent  # keep the session (and queued replies) while away
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._refused: str | None = None
        self.last_message_at = time.monotonic()
        self._client = make_client(settings, client_id)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    @abstractmethod
    def _subscriptions(self) -> list[tuple[str, SubscribeOptions]]:
        """The topic filters to subscribe to on every connection."""

    @abstractmethod
    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None: ...

    def connect(self, timeout: float = 10.0) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s if self._persistent else 0
        self._client.connect_async(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            clean_start=not self._persistent,
            properties=props,
        )
        self._client.loop_start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self._refused or time.monotonic() > deadline:
                self.close()
                why = self._refused or f"no connection within {timeout:.0f} s"
                raise TransportError(f"MQTT broker {self.settings.host}:{self.settings.port}: {why}")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def settle(self, quiet_s: float = 0.3, max_s: float = 3.0) -> None:
        """Wait until retained messages stopped arriving (``quiet_s`` without one), at most ``max_s``."""
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline and time.monotonic() - self.last_message_at < quiet_s:
            time.sleep(0.05)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._refused = refusal(reason)
            client.disconnect()
            return
        set_nodelay(client)
        client.subscribe(self._subscriptions())

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        self._ready.set()


class MqttRequester(CommandClient):
    """An MQTT 5 client that sends analysis requests and matches replies by correlation data."""

    def __init__(
        self, settings: MqttSettings, client_id: str | None = None, persistent: bool = False
    ) -> None:
        client_id = client_id or f"katago-edge-client-{os.urandom(5).hex()}"
        self.topics = FleetTopics(settings.topic_prefix)
        self.reply_topic = self.topics.client_reply(settings.username or client_id)
        self._pending: dict[bytes, Pending] = {}
        self.unmatched = 0
        super().__init__(settings, client_id, persistent)

    def send(
        self,
        topic: str,
        query: dict[str, Any],
        *,
        expiry_s: int | None = 60,
        on_response: Callable[[Response], None] | None = None,
        correlation: bytes | None = None,
    ) -> bytes:
        """Publish one request (QoS 1) and return its correlation data."""
        correlation = correlation or os.urandom(16)
        with self._lock:
            self._pending[correlation] = Pending(
                query, time.perf_counter(), finals_expected(query), on_response=on_response
            )
        props = publish_properties(expiry_s, correlation, self.reply_topic)
        info = self._client.publish(topic, encode(query), qos=1, properties=props)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        return correlation

    def wait(self, correlation: bytes, timeout: float) -> Pending:
        """Block until the request's final response(s) arrived; raises ``TransportError`` on timeout."""
        pending = self.pending(correlation)
        if not pending.done.wait(timeout):
            raise TransportError(
                f"no final reply within {timeout:.1f} s for request {pending.query.get('id')!r}"
            )
        return pending

    def request(
        self, topic: str, query: dict[str, Any], timeout: float = 60.0, **kwargs: Any
    ) -> list[Response]:
        return self.wait(self.send(topic, query, **kwargs), timeout).responses

    def pending(self, correlation: bytes) -> Pending:
        with self._lock:
            return self._pending[correlation]

    # -- paho callbacks ---------------------------------------------------------------------------
    def _subscriptions(self) -> list[tuple[str, SubscribeOptions]]:
        return [(self.reply_topic, SubscribeOptions(qos=1))]

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        if any(r.is_failure for r in reasons):
            self._refused = f"cannot subscribe to {self.reply_topic}: {reasons[0]}"
            return
        self._ready.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None)
        with self._lock:
            pending = self._pending.get(correlation) if correlation is not None else None
        try:
            response = json.loads(msg.payload)
        except ValueError:
            response = None
        if pending is None or not isinstance(response, dict):
            self.unmatched += 1
            return
        props = dict(getattr(msg.properties, "UserProperty", None) or [])
        with self._lock:
            pending.responses.append(response)
            pending.devices.append(str(props.get(DEVICE_PROPERTY, "")))
            terminal = is_terminal(pending.query, response)
            if terminal is not None and not pending.done.is_set():
                pending.remaining = 0 if terminal else pending.remaining - 1
                if pending.remaining <= 0:
                    pending.finished = time.perf_counter()
                    pending.done.set()
        if pending.on_response is not None:
            pending.on_response(response)
