"""Fleet rollouts: ``katago-edge fleet deploy | deployments | rollback``.

``deploy SOURCE`` says which network the chosen devices should serve, as one retained
desired-state message per device (``<p>/<device>/deployment/desired``, ``agent.app.desired``),
and follows what the devices report (their retained status ``deployment`` and the events on
``<p>/<device>/deployment/events``)::

    canary (--canary N online devices) ──► each active, answers a probe query, no new engine
       failures ──► the rest get the desired state ──► every online device active or failed
    K failures (--max-failures, default 1) ──► halt: devices that have not started yet get the
       desired state withdrawn (an empty retained message), so they never receive it

A device that is offline keeps its retained message and deploys when it connects. The rollout's
record (``<p>/fleet/rollouts/<id>``, retained: network, sha256, URL, targets, canary, state) is
what ``deployments`` and ``rollback`` read later. ``rollback DEPLOYMENT`` sends each device a
desired state back to the network it served before (which it kept; ``--to PREVIOUS`` names an
earlier rollout's network instead). Only operator credentials may publish desired states (the
broker's ACL, docs/mqtt.md); a refused publish is an error naming the user.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.app.desired import SHA256_RE, check_url, network_name_from_url
from agent.errors import ConfigError, TransportError
from agent.transports.mqtt.client import CommandClient
from agent.transports.mqtt.settings import MqttSettings
from agent.transports.mqtt.topics import FleetTopics

logger = logging.getLogger(__name__)

TERMINAL = ("active", "failed", "rolled_back")
PROBE = {"moves": [["B", "D4"]], "rules": "tromp-taylor", "komi": 7.5, "boardXSize": 9, "boardYSize": 9}


def new_id(prefix: str = "d") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.urandom(2).hex()}"


class FleetClient(CommandClient):
    """Retained status, desired states and rollout records, live events; publishes as operator."""

    def __init__(self, settings: MqttSettings) -> None:
        self.topics = FleetTopics(settings.topic_prefix)
        self.status: dict[str, dict[str, Any]] = {}
        self.health: dict[str, dict[str, Any]] = {}
        self.desired: dict[str, dict[str, Any]] = {}
        self.rollouts: dict[str, dict[str, Any]] = {}
        self.models: dict[str, dict[str, Any]] = {}  # sha256 -> manifest of a network sent over MQTT
        self.events: list[dict[str, Any]] = []
        self._refused_mids: dict[int, str] = {}
        super().__init__(settings, f"katago-edge-rollout-{os.urandom(4).hex()}")
        self._client.on_publish = self._on_publish

    def connect(self, timeout: float = 10.0) -> None:
        """Connect, then wait for the retained status, desired states and rollout records."""
        super().connect(timeout)
        self.settle()

    def publish(self, topic: str, payload: dict[str, Any] | bytes | None, retain: bool = True) -> None:
        """Publish (QoS 1) and wait for the broker's answer; ``TransportError`` if it refused."""
        if isinstance(payload, bytes):
            data = payload
        else:
            data = json.dumps(payload).encode() if payload is not None else b""
        info = self._client.publish(topic, data, qos=1, retain=retain)
        try:
            info.wait_for_publish(10.0)
        except (RuntimeError, ValueError) as exc:  # paho: not connected (any more), or a bad topic
            raise TransportError(
                f"publish to {topic} failed: {exc} (with use_username_as_clientid a login serves one "
                "connection at a time: is this user name logged in elsewhere?)"
            ) from exc
        if not info.is_published():
            raise TransportError(f"publish to {topic}: no answer from the broker within 10 s")
        with self._lock:
            refused = self._refused_mids.pop(info.mid, None)
        if refused is not None:
            raise TransportError(
                f"the broker refused the publish to {topic}: {refused} (user "
                f"{self.settings.username or '(anonymous)'!r}: only operator credentials may deploy, "
                "see the ACL in docs/mqtt.md)"
            )

    # -- what devices say ---------------------------------------------------------------------------
    def online(self, device: str) -> bool:
        with self._lock:
            return (self.status.get(device) or {}).get("state") == "online"

    def devices(self) -> list[str]:
        with self._lock:
            return sorted(self.status)

    def state_of(self, device: str, dep_id: str) -> dict[str, Any] | None:
        """The device's last word on deployment ``dep_id``: its newest event, else its status."""
        with self._lock:
            for event in reversed(self.events):
                if event.get("device") == device and event.get("deployment") == dep_id:
                    return event
            dep = (self.status.get(device) or {}).get("deployment") or {}
        return dict(dep) if dep.get("id") == dep_id else None

    def engine_failures(self, device: str) -> int:
        with self._lock:
            health = self.health.get(device) or {}
        engine = ((health.get("service") or {}).get("engine")) or {}
        failed = engine.get("failed") if isinstance(engine, dict) else None
        return int(failed) if isinstance(failed, int) else 0

    # -- paho callbacks -----------------------------------------------------------------------------
    def _subscriptions(self) -> list[tuple[str, SubscribeOptions]]:
        t = self.topics
        filters = [t.status_filter, t.health_filter, t.events_filter, t.desired_filter, t.rollouts_filter]
        filters.append(t.manifests_filter)
        return [(f, SubscribeOptions(qos=1)) for f in filters]

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            with self._lock:
                self._refused_mids[mid] = str(reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.last_message_at = time.monotonic()
        try:
            doc = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            return
        if doc is not None and not isinstance(doc, dict):
            return
        topic = msg.topic
        with self._lock:
            device_topic = self.topics.split_device_topic(topic)
            deployment_topic = self.topics.split_deployment_topic(topic)
            if device_topic is not None:
                device, kind = device_topic
                table = self.status if kind == "status" else self.health
                if doc is None:
                    table.pop(device, None)
                else:
                    table[device] = doc
            elif deployment_topic is not None:
                device, kind = deployment_topic
                if kind == "events" and doc is not None:
                    self.events.append({**doc, "device": device})
                elif kind == "desired":
                    if doc is None:
                        self.desired.pop(device, None)
                    else:
                        self.desired[device] = doc
            elif self.topics.is_model_topic(topic) and topic.endswith("/manifest"):
                sha256 = topic.rsplit("/", 2)[-2]
                if doc is None:
                    self.models.pop(sha256, None)
                else:
                    self.models[sha256] = doc
            elif topic.startswith(self.topics.rollout("x")[:-1]):
                dep_id = topic.rsplit("/", 1)[-1]
                if doc is None:
                    self.rollouts.pop(dep_id, None)
                else:
                    self.rollouts[dep_id] = doc


# -- targets and sources ----------------------------------------------------------------------------
def select_targets(client: FleetClient, args: argparse.Namespace) -> list[str]:
    if args.device:
        return list(dict.fromkeys(args.device))
    known = client.devices()
    if args.all:
        return known
    key, sep, value = (args.match or "").partition("=")
    if not sep:
        raise ConfigError("--match expects KEY=VALUE (a field of the device's status, e.g. profile=x86-64)")
    with client._lock:
        return [d for d in known if str(client.status[d].get(key)) == value]


def resolve_source(args: argparse.Namespace) -> tuple[str | None, Path | None, str, int | None, str]:
    """(url, local file, sha256, size, network name) of ``SOURCE``."""
    source: str = args.source
    if "://" in source:
        check_url(source)
        if not args.sha256 or not SHA256_RE.fullmatch(args.sha256.lower()):
            raise ConfigError(
                "a URL source needs --sha256 HEX (64 hex digits): devices refuse a network without it"
            )
        size = args.size
        if source.startswith("file://"):
            path = Path(urllib.parse.unquote(urllib.parse.urlparse(source).path))
            size = size or (path.stat().st_size if path.is_file() else None)
        return source, None, args.sha256.lower(), size, network_name_from_url(source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(f"{source}: no such file (or give an http(s):// or file:// URL with --sha256)")
    from agent.fsutil import sha256_file

    sha = sha256_file(path)
    if args.sha256 and args.sha256.lower() != sha:
        raise ConfigError(f"{path}: sha256 is {sha}, not the --sha256 given")
    return None, path, sha, path.stat().st_size, path.name


def advertised_host(settings: MqttSettings) -> str:
    """The address of this machine on the route to the broker (what devices can reach)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((settings.host, settings.port))
            return str(s.getsockname()[0])
        except OSError:
            return socket.gethostname()


def probe(settings: MqttSettings, client: FleetClient, device: str, timeout: float) -> str | None:
    """Why ``device`` is not healthy (probe query unanswered or an error), or None."""
    from agent.transports.mqtt.client import MqttRequester

    requester = MqttRequester(settings)
    try:
        requester.connect(10.0)
        query = {**PROBE, "id": f"rollout-probe-{os.urandom(3).hex()}", "maxVisits": 2}
        responses = requester.request(client.topics.device_request(device), query, timeout=timeout)
    except TransportError as exc:
        return f"probe query not answered: {exc}"
    finally:
        requester.close()
    final = responses[-1] if responses else {}
    if "error" in final:
        return f"probe query answered with an error: {final['error']}"
    return None


Printer = Callable[[dict[str, dict[str, Any]]], None]


def wait_states(
    devices: list[str],
    state_of: Callable[[str], dict[str, Any] | None],
    timeout: float,
    show: Printer,
    stop_when: Callable[[dict[str, dict[str, Any]]], bool] | None = None,
) -> dict[str, dict[str, Any]]:
    """Until each of ``devices`` reported a terminal state (``state_of``), or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        states = {d: state_of(d) or {"state": "pending"} for d in devices}
        show(states)
        if all(s.get("state") in TERMINAL for s in states.values()):
            return states
        if stop_when is not None and stop_when(states):
            return states
        if time.monotonic() > deadline:
            for d, s in states.items():
                if s.get("state") not in TERMINAL:
                    states[d] = {**s, "state": "failed", "error": f"no final state within {timeout:.0f} s"}
            return states
        time.sleep(0.2)
