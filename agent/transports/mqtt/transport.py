"""MQTT transport: analysis requests in, replies out, status and health published (paho-mqtt 2, MQTT 5).

Life cycle of the connection (Frigate's availability pattern, with MQTT 5 sessions)::

    will_set(status, {"state": "offline"}, qos 1, retained)   before connecting
    CONNECT clean_start=0, Session Expiry Interval            broker keeps subscriptions + queued
                                                              QoS 1 requests while we are away
    on every CONNACK: subscribe requests, publish status "online" (retained), health
    every health_interval_s: health (retained, Message Expiry Interval)
    stop(clean=True): publish status "stopped" (retained), DISCONNECT (the broker drops the will)

Back-pressure, not drops: the CONNECT carries an MQTT 5 **Receive Maximum** equal to what the
dispatcher holds (``max_concurrent + max_queue``) and requests are acknowledged by hand (paho's
``manual_ack``) only once their terminal reply was acknowledged by the broker. So the broker never
sends more requests than the agent can hold (the rest wait in the broker's session queue), and a
request a killed agent had taken is redelivered to the next one (the session is persistent).
Final responses and errors are never dropped (at most one per analysed turn of the held
requests); partial results wait while more than ``outgoing_queue`` replies are unacknowledged and connected (the
search slows instead), and only while disconnected are they dropped (``dropped_outgoing``).

paho reconnects by itself with exponential backoff (``reconnect_min_s`` .. ``reconnect_max_s``). A refused login (bad user name
or password, not authorized) is logged once per attempt with the reason and retried with the same
backoff, at most ``auth_retry_limit`` times; then the transport gives up and ``error`` says why.
Message handling itself lives in :mod:`agent.transports.mqtt.dispatch` (no paho there).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent import __version__
from agent.errors import ConfigError, TransportError
from agent.transports.mqtt.acks import OrderedAcks
from agent.transports.mqtt.dispatch import HandleQuery, RequestDispatcher
from agent.transports.mqtt.handlers import Ack, Incoming, ReplyTo, Response, encode, status_payload
from agent.transports.mqtt.settings import MqttSettings, resolve_password
from agent.transports.mqtt.topics import DeviceTopics

__all__ = [
    "DEVICE_PROPERTY",
    "MqttSettings",
    "MqttTransport",
    "make_client",
    "publish_properties",
    "set_nodelay",
]

logger = logging.getLogger(__name__)

SESSION_TAKEN_OVER = 142  # MQTT 5 DISCONNECT reason code
QUICK_DROP_S = 5.0
QUICK_DROPS_TO_WARN = 3
DEVICE_PROPERTY = "device"
"""MQTT 5 User Property on every analysis reply: the answering device's id."""
AUTH_REFUSED = {134, 135, 4, 5}  # MQTT 5 Bad user name or password / Not authorized; 3.1.1 codes 4, 5
InfoSource = Callable[[], dict[str, Any]] | dict[str, Any] | None


def make_client(settings: MqttSettings, client_id: str, manual_ack: bool = False) -> mqtt.Client:
    """A paho MQTT 5 client with TLS, credentials and reconnect backoff set from ``settings``.

    paho's own outgoing queue is unbounded: the agent bounds what it publishes itself."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    if settings.use_tls:
        try:
            client.tls_set(
                ca_certs=str(settings.ca_file) if settings.ca_file else None,
                certfile=str(settings.cert_file) if settings.cert_file else None,
                keyfile=str(settings.key_file) if settings.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"MQTT TLS set-up failed: {exc}") from exc
        client.tls_insecure_set(settings.tls_insecure)
    if settings.username:
        client.username_pw_set(settings.username, resolve_password(settings))
    client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
    client.max_inflight_messages_set(100)
    return client


def set_nodelay(client: mqtt.Client) -> None:
    """Disable Nagle's algorithm on the client's socket (paho does not).

    MQTT request/response is many small packets each way; with Nagle plus the peer's delayed ACK a
    reply can sit ~40 ms in the kernel. Call from ``on_connect``."""
    sock = client.socket()
    if not isinstance(sock, socket.socket):  # ssl.SSLSocket is a socket.socket too
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # e.g. a proxy or Unix socket: not worth failing for
        logger.debug("TCP_NODELAY not set: %s", exc)


def publish_properties(
    expiry_s: int | None = None, correlation: bytes | None = None, response_topic: str | None = None
) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    if expiry_s is not None:
        props.MessageExpiryInterval = int(expiry_s)
    if correlation is not None:
        props.CorrelationData = correlation
    if response_topic is not None:
        props.ResponseTopic = response_topic
    return props


def _info(source: InfoSource) -> dict[str, Any]:
    if source is None:
        return {}
    return dict(source() if callable(source) else source)


class MqttTransport:
    """Serves KataGo analysis queries over MQTT for one device and reports its status and health.

    ``handle_query(query, emit)`` is the analysis service's entry point (``AnalysisService.handle_query``);
    ``health_source()`` returns the health snapshot dict; ``status_info`` (dict or callable) adds
    profile, engine, runtime and network to the status document.
    """

    def __init__(
        self,
        config: MqttSettings,
        device_id: str,
        handle_query: HandleQuery,
        health_source: Callable[[], dict[str, Any]] | None = None,
        status_info: InfoSource = None,
        on_fatal: Callable[[TransportError], None] | None = None,
        on_desired: Callable[[bytes], None] | None = None,
    ) -> None:
        self.config = config
        self._on_desired = on_desired  # the retained desired network (agent.app.deployment)
        # exact topics a caller reads for a while (a network's chunks: agent.app.mqtt_download)
        self._watched: dict[str, Callable[[bytes], None]] = {}
        self.device_id = device_id
        self.topics = DeviceTopics(config.topic_prefix, device_id)
        self.client_id = config.client_id or f"katago-edge-{device_id}"
        self._health_source = health_source
        self._status_info = status_info
        self._on_fatal = on_fatal
        self._since = time.time()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._health_now = threading.Event()
        self._lock = threading.Lock()
        self._counts = {
            "connects": 0,
            "disconnects": 0,
            "auth_failures": 0,
            "dropped_outgoing": 0,
            "publish_errors": 0,
            "publish_refused": 0,
            "published": 0,
        }
        self._error: TransportError | None = None
        self._health_thread: threading.Thread | None = None
        self.dispatcher = RequestDispatcher(
            handle_query,
            self._publish_reply,
            max_concurrent=config.max_concurrent,
            max_queue=config.max_queue,
            max_payload_bytes=config.max_payload_bytes,
            request_timeout_s=config.request_timeout_s,
            dedup_ttl_s=config.dedup_ttl_s,
            reply_check=self.topics.fleet.reply_conflict,
            max_backlog_bytes=config.max_backlog_bytes,
            max_requester_share=config.max_requester_share,
        )
        self._client = make_client(config, self.client_id, manual_ack=True)
        self._acks = OrderedAcks(self._client.ack)  # PUBACKs in arrival order, as MQTT requires
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish
        self._own_mids: dict[int, str] = {}  # mid -> our status/health topic, to explain refusals
        self._refused_topics: set[str] = set()
        # Publishes not yet acknowledged by the broker: mid -> what to do then (ack the request).
        self._unconfirmed: dict[int, Ack | None] = {}
        self._confirmed_early: set[int] = set()  # PUBACK seen before publish() returned the mid
        self._room = threading.Condition(self._lock)
        self._network_thread: int | None = None
        self._connected_at = 0.0
        self._quick_drops = 0  # consecutive connections lost within QUICK_DROP_S of connecting
        will = status_payload(
            "offline", device_id, self._since, {"version": __version__, **_info(status_info)}
        )
        self._client.will_set(self.topics.status, encode(will), qos=1, retain=True)

    # -- public -----------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def error(self) -> TransportError | None:
        """Set when the transport gave up (credentials refused ``auth_retry_limit`` times)."""
        return self._error

    def start(self) -> None:
        """Connect in the background (returns at once; the broker may come up later)."""
        self.dispatcher.start()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry_s
        props.ReceiveMaximum = self.dispatcher.capacity
        logger.info(
            "MQTT: connecting to %s:%s as %s (tls=%s, user=%s)",
            self.config.host,
            self.config.port,
            self.client_id,
            self.config.use_tls,
            self.config.username or "-",
        )
        self._client.connect_async(
            self.config.host,
            self.config.port,
            keepalive=self.config.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()
        self._health_thread = threading.Thread(target=self._health_loop, name="mqtt-health", daemon=True)
        self._health_thread.start()

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._error is not None:
                raise self._error
            if self._connected.wait(0.05):
                return True
        return self._connected.is_set()

    def stop(self, clean: bool = True, timeout: float = 5.0) -> None:
        """Stop serving: answer or abort pending requests, publish ``stopped``, disconnect."""
        self._stop.set()
        self._health_now.set()
        with self._room:
            self._room.notify_all()
        self.dispatcher.stop(timeout)
        if clean and self._connected.is_set():
            info = self._publish(self.topics.status, self._status("stopped"), retain=True)
            if info is not None:
                try:
                    info.wait_for_publish(timeout=min(timeout, 3.0))
                except (RuntimeError, ValueError) as exc:
                    logger.warning("MQTT: 'stopped' status not confirmed: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()
        if self._health_thread is not None:
            self._health_thread.join(timeout=2.0)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
            out["unconfirmed"] = len(self._unconfirmed)
        out["acks_waiting"] = self._acks.waiting()
        out["acks_reordered"] = self._acks.reordered
        out["connected"] = self.connected
        out.update(self.dispatcher.stats())
        return out

    def publish_status(self) -> None:
        """Publish the retained ``online`` status again (its info changed, e.g. a deployment step)."""
        if self._connected.is_set() and not self._stop.is_set():
            self._publish(self.topics.status, self._status("online"), retain=True)

    def publish_event(self, event: dict[str, Any]) -> None:
        """One deployment event on ``<p>/<device>/deployment/events`` (QoS 1, not retained)."""
        self._publish(self.topics.events, {"device": self.device_id, **event})

    def watch(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Subscribe (QoS 0) to one exact topic and hand its payloads to ``handler`` (paho's thread:
        queue only), again after every reconnect, until :meth:`unwatch`. Subscribing delivers the
        topic's retained message, also when the subscription existed already."""
        with self._lock:
            self._watched[topic] = handler
        if self._connected.is_set():
            self._client.subscribe(topic, options=SubscribeOptions(qos=0))

    def unwatch(self, topic: str) -> None:
        with self._lock:
            known = self._watched.pop(topic, None) is not None
        if known and self._connected.is_set():
            self._client.unsubscribe(topic)

    def publish_health(self) -> None:
        """Publish one health snapshot now (also done every ``health_interval_s``)."""
        snapshot: dict[str, Any] = {}
        if self._health_source is not None:
            try:
                snapshot = dict(self._health_source())
            except Exception as exc:  # health must never take the transport down; the cause is logged
                logger.warning("health snapshot failed: %s", exc, exc_info=True)
                snapshot = {"health_error": str(exc)}
        # "device_id", not "device": the daemon's snapshot nests its device health under "device"
        payload = {"device_id": self.device_id, "ts": round(time.time(), 3), **snapshot, "mqtt": self.stats()}
        self._publish(self.topics.health, payload, retain=True, expiry_s=self.config.health_expiry)

    # -- paho callbacks (network thread) ----------------------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        if reason.is_failure:
            self._refused(client, reason)
            return
        set_nodelay(client)
        self._acks.new_connection()  # the broker redelivers what the last connection left unacknowledged
        with self._lock:
            self._counts["connects"] += 1
            self._counts["auth_failures"] = 0
            self._connected_at = time.monotonic()
        logger.info(
            "MQTT: connected to %s:%s (session present: %s)",
            self.config.host,
            self.config.port,
            flags.session_present,
        )
        subs: list[tuple[str, SubscribeOptions]] = [(self.topics.request, SubscribeOptions(qos=1))]
        if self.config.fleet_requests:
            shared = self.topics.fleet.shared_fleet_request(self.config.share_group)
            subs.append((shared, SubscribeOptions(qos=1)))
        if self._on_desired is not None:
            subs.append((self.topics.desired, SubscribeOptions(qos=1)))
        with self._lock:
            subs.extend((topic, SubscribeOptions(qos=0)) for topic in self._watched)
        client.subscribe(subs)
        self._connected.set()
        self._publish(self.topics.status, self._status("online"), retain=True)
        self._health_now.set()  # the snapshot may take a while (CPU sampling): not on this thread

    def _refused(self, client: mqtt.Client, reason: ReasonCode) -> None:
        code = reason.value
        if code not in AUTH_REFUSED:
            logger.warning(
                "MQTT: broker %s:%s refused the connection: %s", self.config.host, self.config.port, reason
            )
            return
        with self._lock:
            self._counts["auth_failures"] += 1
            failures = self._counts["auth_failures"]
        limit = self.config.auth_retry_limit
        message = (
            f"MQTT broker {self.config.host}:{self.config.port} refused the login of user "
            f"{self.config.username or '(none)'!r} as {self.client_id!r}: {reason} "
            "(check username, password source and the broker's ACL)"
        )
        if limit and failures >= limit:
            logger.error("%s; giving up after %d attempts", message, failures)
            self._error = TransportError(message)
            client.disconnect()
            if self._on_fatal is not None:
                self._on_fatal(self._error)
        else:
            logger.error(
                "%s; retrying with backoff (attempt %d of %s)", message, failures, limit or "unlimited"
            )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            logger.error(
                "MQTT: broker refused %d request subscription(s) (%s): check the ACL for user %r",
                len(refused),
                ", ".join(refused),
                self.config.username or "(none)",
            )

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        with self._lock:
            topic = self._own_mids.pop(mid, None)
            if mid in self._unconfirmed:
                then = self._unconfirmed.pop(mid)
            else:
                then = None
                self._confirmed_early.add(mid)
            self._counts["published"] += 1
            self._room.notify_all()
        if then is not None:
            then()  # acknowledge the request whose terminal reply this was
        with self._lock:
            if not reason.is_failure:
                return
            self._counts["publish_refused"] += 1
            first = topic is not None and topic not in self._refused_topics
            if first and topic is not None:
                self._refused_topics.add(topic)
        if first:
            logger.error(
                "MQTT: broker refused our publish to %s: %s; check the ACL (user %r must be allowed "
                "to write the device's own topics)",
                topic,
                reason,
                self.config.username or "(none)",
            )

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        logger.info("MQTT: cannot reach %s:%s; retrying with backoff", self.config.host, self.config.port)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected:
            with self._lock:
                self._counts["disconnects"] += 1
                quick = time.monotonic() - self._connected_at < QUICK_DROP_S
                self._quick_drops = self._quick_drops + 1 if quick else 0
                flapping = self._quick_drops == QUICK_DROPS_TO_WARN
            if reason.value == SESSION_TAKEN_OVER or (flapping and not self._stop.is_set()):
                # Mosquitto closes the socket without a reason when another client takes the
                # session, so paho says "Unspecified error": the pattern is the clue.
                logger.error(
                    "MQTT: the broker dropped the connection %s: another client is probably using "
                    "client id %r (two devices with one device id, or a login reused); each device "
                    "needs its own device id and user name, and use_username_as_clientid binds "
                    "them (docs/mqtt.md)",
                    "(session taken over)"
                    if reason.value == SESSION_TAKEN_OVER
                    else f"{self._quick_drops} times within {QUICK_DROP_S:g} s of connecting",
                    self.client_id,
                )
            if not self._stop.is_set():
                logger.warning(
                    "MQTT: disconnected from %s:%s (%s); reconnecting",
                    self.config.host,
                    self.config.port,
                    reason,
                )

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._network_thread = threading.get_ident()
        ack = self._ack_for(msg.mid, msg.qos)
        if self._on_desired is not None and msg.topic == self.topics.desired:
            try:
                self._on_desired(bytes(msg.payload))  # only queues it: the work has its own thread
            except Exception:  # never let one message kill paho's network thread; the cause is logged
                logger.exception("MQTT: failed to take the desired deployment state")
            if ack is not None:
                ack()
            return
        if self.topics.fleet.is_model_topic(msg.topic):  # a network's chunks: never a request
            with self._lock:
                handler = self._watched.get(msg.topic)
            if handler is not None:
                try:
                    handler(bytes(msg.payload))
                except Exception:  # never let one message kill paho's network thread; the cause is logged
                    logger.exception("MQTT: failed to take a message on %r", msg.topic)
            if ack is not None:
                ack()
            return
        try:
            props = msg.properties
            incoming = Incoming(
                topic=msg.topic,
                payload=bytes(msg.payload),
                response_topic=getattr(props, "ResponseTopic", None),
                correlation=getattr(props, "CorrelationData", None),
                expiry_s=getattr(props, "MessageExpiryInterval", None),
                ack=ack,
            )
        except Exception:  # e.g. a topic that is not UTF-8: acknowledge, nothing to answer
            logger.exception("MQTT: unreadable message (mid %s)", msg.mid)
            if ack is not None:
                ack()
            return
        try:
            self.dispatcher.on_message(incoming)
        except Exception:  # never let one message kill paho's network thread; the cause is logged
            logger.exception("MQTT: failed to handle a message on %r", incoming.topic)

    def _ack_for(self, mid: int, qos: int) -> Ack | None:
        """The PUBACK of one received message, sent once and in arrival order (QoS 0 needs none)."""
        if qos == 0:
            return None
        return self._acks.ticket(mid, qos)

    # -- publishing -------------------------------------------------------------------------------
    def _status(self, state: str) -> dict[str, Any]:
        try:
            info = _info(self._status_info)
        except Exception as exc:  # status info is decoration; publish the state anyway
            logger.warning("status info failed: %s", exc)
            info = {}
        return status_payload(state, self.device_id, self._since, {"version": __version__, **info})

    def _publish_reply(self, reply: ReplyTo, response: Response, then: Ack | None = None) -> None:
        """Publish one reply. ``then`` (given for terminal replies) runs once the broker has it.

        Partial results (no ``then``) wait while ``outgoing_queue`` replies are unconfirmed and
        the broker is connected; while disconnected they are dropped beyond that bound."""
        if then is None and not self._room_for_partial():
            with self._lock:
                self._counts["dropped_outgoing"] += 1
            return
        self._publish(
            reply.topic,
            response,
            correlation=reply.correlation,
            expiry_s=self.config.reply_expiry_s,
            then=then,
            device=True,
        )

    def _room_for_partial(self) -> bool:
        limit = self.config.outgoing_queue
        on_network_thread = threading.get_ident() == self._network_thread
        with self._room:
            while len(self._unconfirmed) >= limit:
                if not self._connected.is_set() or self._stop.is_set() or on_network_thread:
                    return False
                self._room.wait(0.5)
        return True

    def _publish(
        self,
        topic: str,
        payload: Any,
        *,
        retain: bool = False,
        correlation: bytes | None = None,
        expiry_s: int | None = None,
        then: Ack | None = None,
        device: bool = False,
    ) -> mqtt.MQTTMessageInfo | None:
        props = publish_properties(expiry_s, correlation)
        if device:  # which device answered (informational: see docs/mqtt.md, threat model)
            props.UserProperty = [(DEVICE_PROPERTY, self.device_id)]
        try:
            info = self._client.publish(topic, encode(payload), qos=1, retain=retain, properties=props)
        except ValueError as exc:
            with self._lock:
                self._counts["publish_errors"] += 1
            logger.warning("MQTT: cannot publish to %r: %s", topic, exc)
            if then is not None:
                then()  # never deliverable: acknowledge, or the broker would redeliver it forever
            return None
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            with self._lock:
                self._counts["publish_errors"] += 1
            logger.warning("MQTT: publish to %r failed: %s", topic, mqtt.error_string(info.rc))
            if then is not None:
                then()
            return None
        with self._lock:
            if info.mid in self._confirmed_early:  # the PUBACK was faster than this thread
                self._confirmed_early.discard(info.mid)
                confirmed = True
            else:
                self._unconfirmed[info.mid] = then
                confirmed = False
                if topic in (self.topics.status, self.topics.health):
                    if len(self._own_mids) > 1000:  # unacknowledged for long: forget the oldest
                        self._own_mids.pop(next(iter(self._own_mids)))
                    self._own_mids[info.mid] = topic
        if confirmed and then is not None:
            then()
        return info

    def _health_loop(self) -> None:
        while not self._stop.is_set():
            self._health_now.wait(self.config.health_interval_s)
            self._health_now.clear()
            if self._connected.is_set() and not self._stop.is_set():
                self.publish_health()
