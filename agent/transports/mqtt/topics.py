"""Every MQTT topic string of katago-edge, built in one place.

Layout (``<p>`` is the configurable prefix, default ``katago``; ``<device>`` the device id)::

    <p>/<device>/status               retained JSON {state: online|offline|stopped, ...}; last will
    <p>/<device>/health               retained JSON health snapshot with a message expiry
    <p>/<device>/analysis/request     KataGo analysis queries for this one device
    <p>/fleet/analysis/request        queries any idle device may take; agents subscribe through
                                      the shared subscription $share/<group>/<p>/fleet/analysis/request
    <p>/clients/<client>/reply        suggested reply topic for requesters (``query``, fleet tools);
                                      any topic named in the Response Topic works
    <p>/<device>/deployment/desired   retained desired network (``fleet deploy``; operators only)
    <p>/<device>/deployment/events    the device's deployment steps, one JSON event per message
    <p>/fleet/rollouts/<id>           retained record of one rollout (``fleet deploy``)
    <p>/fleet/models/<sha256>/manifest   retained manifest of a network sent over MQTT
    <p>/fleet/models/<sha256>/chunk/<n>  retained chunk n of it (``fleet deploy --transfer mqtt``)

``fleet`` and ``clients`` are therefore reserved and cannot be device ids. Device ids and the prefix
must not contain the MQTT wildcards ``+`` / ``#`` or start with ``$`` (broker-internal topics); the
device id must be a single topic level (no ``/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

from agent.errors import ConfigError

RESERVED_DEVICE_IDS = frozenset({"fleet", "clients"})
_FORBIDDEN_CHARS = frozenset("+#\x00")


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it can be one topic level, else raise ``ConfigError``."""
    if not device_id:
        raise ConfigError("device id must not be empty")
    if "/" in device_id or any(c in _FORBIDDEN_CHARS for c in device_id) or device_id.startswith("$"):
        raise ConfigError(f"device id {device_id!r} must not contain '/', '+', '#' or start with '$'")
    if device_id in RESERVED_DEVICE_IDS:
        raise ConfigError(f"device id {device_id!r} is reserved for topics ({sorted(RESERVED_DEVICE_IDS)})")
    return device_id


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if usable as the first topic levels (may contain '/'), else raise."""
    if not prefix or prefix.startswith("$") or prefix.startswith("/") or prefix.endswith("/"):
        raise ConfigError(
            f"topic prefix {prefix!r} must be non-empty, not start with '$' or '/', nor end in '/'"
        )
    if any(c in _FORBIDDEN_CHARS for c in prefix):
        raise ConfigError(f"topic prefix {prefix!r} must not contain MQTT wildcards")
    return prefix


def check_publish_topic(topic: str) -> str | None:
    """Why ``topic`` cannot be published to (wildcards, empty, ``$``-topic), or None when it can."""
    if not topic:
        return "empty topic"
    if any(c in _FORBIDDEN_CHARS for c in topic):
        return "topic contains a wildcard or NUL"
    if topic.startswith("$"):
        return "topics starting with '$' are reserved for the broker"
    if len(topic.encode("utf-8")) > 65535:
        return "topic longer than 65535 bytes"
    return None


class _Topic:
    """A read-only topic attribute: ``template`` filled in from the topics object's fields
    (``{prefix}``, ``{device_id}``)."""

    def __init__(self, template: str) -> None:
        self.template = template

    @overload
    def __get__(self, topics: None, owner: type) -> _Topic: ...
    @overload
    def __get__(self, topics: object, owner: type | None = None) -> str: ...
    def __get__(self, topics: object, owner: type | None = None) -> str | _Topic:
        return self if topics is None else self.template.format_map(vars(topics))


@dataclass(frozen=True)
class FleetTopics:
    """Topics that span every device under one prefix (fleet monitor, requesters)."""

    prefix: str = "katago"

    def __post_init__(self) -> None:
        check_prefix(self.prefix)

    status_filter = _Topic("{prefix}/+/status")
    health_filter = _Topic("{prefix}/+/health")
    fleet_request = _Topic("{prefix}/fleet/analysis/request")
    desired_filter = _Topic("{prefix}/+/deployment/desired")
    events_filter = _Topic("{prefix}/+/deployment/events")
    rollouts_filter = _Topic("{prefix}/fleet/rollouts/+")
    manifests_filter = _Topic("{prefix}/fleet/models/+/manifest")

    def shared_fleet_request(self, group: str) -> str:
        if not group or "/" in group or any(c in _FORBIDDEN_CHARS for c in group):
            raise ConfigError(
                f"shared subscription group {group!r} must be one topic level without wildcards"
            )
        return f"$share/{group}/{self.fleet_request}"

    def device_request(self, device_id: str) -> str:
        return f"{self.prefix}/{check_device_id(device_id)}/analysis/request"

    def client_reply(self, client_id: str) -> str:
        return f"{self.prefix}/clients/{client_id}/reply"

    def reply_conflict(self, topic: str) -> str | None:
        """Why ``topic`` must not receive analysis replies (a status, health or request topic of
        this prefix: a requester could otherwise inject messages there), or None."""
        if self.split_device_topic(topic) is not None:
            return "reply topic is a device status/health topic"
        head = self.prefix + "/"
        if topic.startswith(head) and topic.endswith("/analysis/request"):
            return "reply topic is a request topic"
        if self.split_deployment_topic(topic) is not None or topic.startswith(f"{head}fleet/rollouts/"):
            return "reply topic is a deployment topic"
        if self.is_model_topic(topic):
            return "reply topic is a model transfer topic"
        return None

    def rollout(self, deployment_id: str) -> str:
        return f"{self.prefix}/fleet/rollouts/{check_device_id(deployment_id)}"

    def desired(self, device_id: str) -> str:
        return f"{self.prefix}/{check_device_id(device_id)}/deployment/desired"

    def model(self, sha256: str) -> str:
        """``<p>/fleet/models/<sha256>``: where a network sent over MQTT lies (``mqtt:`` + this)."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ConfigError(f"model topic: {sha256!r} is not a sha256 (64 lower-case hex digits)")
        return f"{self.prefix}/fleet/models/{sha256}"

    def model_manifest(self, sha256: str) -> str:
        return f"{self.model(sha256)}/manifest"

    def model_chunk(self, sha256: str, index: int) -> str:
        return f"{self.model(sha256)}/chunk/{index}"

    def is_model_topic(self, topic: str) -> bool:
        return topic.startswith(f"{self.prefix}/fleet/models/")

    def split_deployment_topic(self, topic: str) -> tuple[str, str] | None:
        """``<p>/<device>/deployment/<kind>`` -> ``(device, kind)`` (desired, events), else None."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head) :].split("/")
        if len(rest) != 3 or rest[1] != "deployment" or rest[2] not in ("desired", "events"):
            return None
        return (rest[0], rest[2]) if rest[0] not in RESERVED_DEVICE_IDS else None

    def split_device_topic(self, topic: str) -> tuple[str, str] | None:
        """``<p>/<device>/<kind>`` -> ``(device, kind)`` for status/health topics, else None."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head) :].split("/")
        if len(rest) != 2 or rest[1] not in ("status", "health") or rest[0] in RESERVED_DEVICE_IDS:
            return None
        return rest[0], rest[1]


@dataclass(frozen=True)
class DeviceTopics:
    """Topics of one device."""

    prefix: str
    device_id: str

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        check_device_id(self.device_id)

    @property
    def fleet(self) -> FleetTopics:
        return FleetTopics(self.prefix)

    status = _Topic("{prefix}/{device_id}/status")
    health = _Topic("{prefix}/{device_id}/health")
    request = _Topic("{prefix}/{device_id}/analysis/request")
    desired = _Topic("{prefix}/{device_id}/deployment/desired")
    events = _Topic("{prefix}/{device_id}/deployment/events")
