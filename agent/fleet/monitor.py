"""Fleet monitor and MQTT client commands: ``katago-edge fleet`` and ``katago-edge query``.

The monitor subscribes to ``<p>/+/status`` and ``<p>/+/health`` (both retained, so a monitor that
starts late still sees every device at once) and keeps one row per device:

======== =================================================================================
state    ``online`` / ``offline`` (last will) / ``stopped`` (clean exit); ``stale`` when an
         online device sent nothing for ``--stale-after`` seconds, or has no health at all
         (health is retained with an expiry, so a silent device loses it)
seen     seconds since the device's last health snapshot (its ``ts``) or live status; a
         retained status alone does not count as seen
profile  status ``profile``; engine = status ``engine`` / ``runtime``
serving  the network runtime/precision that serves (status ``serving`` / health ``network``);
         ``FALLBACK`` when it is not the profile's first choice (health ``network.fallbacks``
         has each reason)
network  the network's file name and sha256 (status ``deployment.current``), its verify result
deploy   the last deployment and its state (``fleet deploy``: pending ... active, failed)
temp     hottest thermal zone (health ``temperatures``), else the thermal guard's reading
throttle Raspberry Pi throttling conditions active now (health ``throttling.now``)
cpu/mem  health ``cpu.percent`` and ``memory.used_percent``
evals/s  health ``engine.evals_per_s``; queue = engine queue + MQTT requests waiting
errors   MQTT requests refused as malformed/oversize, timeouts, service errors, engine failures
======== =================================================================================

Rows over ``--warn-temp`` / ``--hot-temp`` degrees, throttled, or with errors are highlighted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.app.config import add_config_argument
from agent.transports.mqtt.client import CommandClient
from agent.transports.mqtt.settings import MqttSettings
from agent.transports.mqtt.topics import FleetTopics

logger = logging.getLogger(__name__)


@dataclass
class DeviceView:
    device: str
    status: dict[str, Any] | None = None
    health: dict[str, Any] | None = None
    status_at: float | None = None
    health_at: float | None = None

    @property
    def last_seen(self) -> float | None:
        times = [t for t in (self.status_at, self.health_at) if t is not None]
        return max(times) if times else None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _first(d: dict[str, Any], *paths: str) -> Any:
    """The first present value among dotted ``paths`` (health documents nest differently: the
    daemon puts the device snapshot under ``device`` and engine counters under ``service.engine``)."""
    for path in paths:
        value = _get(d, *path.split("."))
        if value is not None:
            return value
    return None


def summarize(view: DeviceView, now: float, stale_after_s: float) -> dict[str, Any]:
    """One table row (plain values) from a device's last status and health documents."""
    status, health = view.status or {}, view.health or {}
    state = str(status.get("state", "unknown"))
    seen = view.last_seen
    age = None if seen is None else max(0.0, now - seen)
    if state == "online" and (view.health is None or age is None or age > stale_after_s):
        state = "stale"  # online per its retained status, but no health within its expiry
    zones = _first(health, "temperatures", "device.temperatures")
    temps = [t for t in (_num(v) for v in zones.values()) if t is not None] if isinstance(zones, dict) else []
    temperature = (
        max(temps)
        if temps
        else _num(_first(health, "thermal.temperature_c", "device.thermal.temperature_c", "temperature_c"))
    )
    throttling_now = _first(health, "throttling.now", "device.throttling.now")
    throttled = list(throttling_now) if isinstance(throttling_now, list) else bool(health.get("throttled"))
    mqtt_stats = health.get("mqtt") or {}
    engine = _first(health, "engine", "service.engine", "device.engine") or {}
    if not isinstance(engine, dict):
        engine = {}
    errors = sum(
        int(_num(x) or 0)
        for x in (
            mqtt_stats.get("malformed"),
            mqtt_stats.get("oversize"),
            mqtt_stats.get("timeouts"),
            mqtt_stats.get("internal_errors"),
            engine.get("failed"),
        )
    )
    queue = int(_num(engine.get("queue_depth")) or 0) + int(_num(mqtt_stats.get("queued")) or 0)
    return {
        "device": view.device,
        "state": state,
        "last_seen_s": None if age is None else round(age, 1),
        "profile": status.get("profile") or _first(health, "agent.profile"),
        "engine": status.get("engine") or status.get("runtime") or _first(health, "agent.engine"),
        "serving": _serving(status, health),
        "fallbacks": _fallbacks(health),
        **_network(status, health),
        "temperature_c": temperature,
        "throttled": throttled,
        "cpu_percent": _num(_first(health, "cpu.percent", "device.cpu.percent", "cpu_percent")),
        "memory_percent": _num(
            _first(health, "memory.used_percent", "device.memory.used_percent", "memory_percent")
        ),
        "evals_per_s": _num(engine.get("evals_per_s")),
        "queue": queue,
        "errors": errors,
        "status": view.status,
        "health": view.health,
    }


def _serving(status: dict[str, Any], health: dict[str, Any]) -> str | None:
    serving = status.get("serving") or _first(health, "network.serving") or {}
    if not isinstance(serving, dict) or not serving.get("runtime"):
        return None
    via = f" via {serving['provider']}" if serving.get("provider") else ""
    return f"{serving['runtime']}/{serving.get('precision')}{via}"


def _network(status: dict[str, Any], health: dict[str, Any]) -> dict[str, Any]:
    """Network name and sha256, verify result and deployment state (``agent.app.deployment``)."""
    deployment = status.get("deployment") or health.get("deployment") or {}
    current = deployment.get("current") or {}
    serving = status.get("serving") or _first(health, "network.serving") or {}
    verify = serving.get("verify") if isinstance(serving, dict) else None
    state = f"{deployment.get('id')} {deployment.get('state')}" if deployment.get("id") else None
    if state and deployment.get("state") == "downloading" and deployment.get("progress") is not None:
        state += f" {100 * deployment['progress']:.0f}%"
    return {
        "network": current.get("network") or (str(status.get("network") or "").rsplit("/", 1)[-1] or None),
        "network_sha256": current.get("sha256"),
        "verify": verify.get("status") if isinstance(verify, dict) else None,
        "deployment": state,
        "deployment_error": deployment.get("error"),
    }


def _fallbacks(health: dict[str, Any]) -> list[dict[str, Any]]:
    found = _first(health, "network.fallbacks")
    return [f for f in found if isinstance(f, dict)] if isinstance(found, list) else []


class FleetMonitor(CommandClient):
    """Collects the retained status and health of every device under one topic prefix."""

    def __init__(self, settings: MqttSettings, client_id: str | None = None) -> None:
        self.topics = FleetTopics(settings.topic_prefix)
        self._devices: dict[str, DeviceView] = {}
        super().__init__(settings, client_id or f"katago-edge-fleet-{os.urandom(4).hex()}")

    def rows(self, stale_after_s: float = 90.0) -> list[dict[str, Any]]:
        now = time.time()
        with self._lock:
            views = sorted(self._devices.values(), key=lambda v: v.device)
            return [summarize(v, now, stale_after_s) for v in views]

    def _subscriptions(self) -> list[tuple[str, SubscribeOptions]]:
        return [(f, SubscribeOptions(qos=1)) for f in (self.topics.status_filter, self.topics.health_filter)]

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.last_message_at = time.monotonic()
        parts = self.topics.split_device_topic(msg.topic)
        if parts is None:
            return
        device, kind = parts
        try:
            doc = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            logger.debug("ignoring non-JSON %s of %s", kind, device)
            return
        if doc is not None and not isinstance(doc, dict):
            return
        now = time.time()
        with self._lock:
            view = self._devices.setdefault(device, DeviceView(device))
            if kind == "status":
                # A retained status may be hours old: it says nothing about when the device was seen.
                view.status = doc
                view.status_at = None if doc is None or msg.retain else now
            else:
                view.health = doc
                ts = _num(doc.get("ts")) if doc is not None else None
                view.health_at = None if doc is None else (min(ts, now) if ts is not None else now)
            if view.status is None and view.health is None:
                del self._devices[device]  # retained messages cleared: the device was removed


# -- CLI --------------------------------------------------------------------------------------------
def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("broker (defaults: the [mqtt] table of --config, else localhost:1883)")
    add_config_argument(g, "its [mqtt] table")
    g.add_argument("--broker", metavar="HOST[:PORT]", default=os.environ.get("KATAGO_EDGE_MQTT_BROKER"))
    g.add_argument("--prefix", default=None, help="topic prefix (default katago)")
    g.add_argument("--username")
    g.add_argument("--password-file", type=str, help="file holding the password")
    g.add_argument("--password-env", help="environment variable holding the password")
    g.add_argument("--ca-file", help="CA certificate: enables TLS")
    g.add_argument("--cert-file", help="client certificate (with --key-file)")
    g.add_argument("--key-file")


def settings_from_args(args: argparse.Namespace) -> MqttSettings:
    """Broker settings for the client commands: ``--config``'s ``[mqtt]``, then the flags on top.

    The client gets its own random client id; the config's ``client_id`` belongs to the agent."""
    from pathlib import Path

    from pydantic import ValidationError

    from agent.errors import ConfigError

    base: dict[str, Any] = {}
    if getattr(args, "config", None):
        from agent.app.config import load_config

        base = load_config(Path(args.config)).mqtt.model_dump(exclude={"client_id"}, exclude_unset=True)
    fields: dict[str, Any] = {**base, "reconnect_max_s": max(5, int(base.get("reconnect_min_s", 1)))}
    if args.prefix:
        fields["topic_prefix"] = args.prefix
    for name in ("password_file", "password_env"):
        if getattr(args, name, None):  # a password flag replaces the config's password source
            for source in ("password_file", "password_env", "password_credential"):
                fields.pop(source, None)
    for name in ("username", "password_file", "password_env", "ca_file", "cert_file", "key_file"):
        if getattr(args, name, None):
            fields[name] = getattr(args, name)
    try:
        settings = MqttSettings(**fields)
    except ValidationError as exc:
        raise ConfigError(f"bad broker options: {exc.errors()[0]['msg']}") from exc
    return settings.with_broker(args.broker)


def configure_fleet(parser: argparse.ArgumentParser) -> None:
    add_broker_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument("--stale-after", type=float, default=90.0, help="seconds of silence before 'stale'")
    parser.add_argument("--warn-temp", type=float, default=70.0)
    parser.add_argument("--hot-temp", type=float, default=80.0)
    parser.add_argument("--refresh", type=float, default=1.0, help="live table refresh (s)")


def command_fleet(args: argparse.Namespace) -> int:
    from agent.fleet.view import render_table, run_live, wide_console

    monitor = FleetMonitor(settings_from_args(args))
    monitor.connect()
    try:
        monitor.settle()
        if args.once:
            rows = monitor.rows(args.stale_after)
            if args.json:
                print(json.dumps({"ts": round(time.time(), 3), "devices": rows}, indent=2))
            else:
                wide_console().print(render_table(rows, args.warn_temp, args.hot_temp))
            return 0
        run_live(monitor, args)
        return 0
    finally:
        monitor.close()


def configure_query(parser: argparse.ArgumentParser) -> None:
    from agent.fleet.view import configure_query_arguments

    configure_query_arguments(parser)
    add_broker_arguments(parser)


def command_query(args: argparse.Namespace) -> int:
    from agent.fleet.view import run_query

    return run_query(args, settings_from_args(args))
