"""The rollout subcommands of ``katago-edge fleet``: ``deploy``, ``deployments``, ``rollback``,
``serve-model`` (parsers and entry points; the mechanics are in ``agent.fleet.rollout``).

Exit codes: 0 done (every online target active, or rolled back), 1 a failure or a halted
rollout, 2 bad arguments (argparse).
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from agent.errors import ConfigError
from agent.fleet.chunks import CHUNK_SIZE, clear_model, publish_model
from agent.fleet.model_server import ModelServer, command_serve_model, configure_serve_model, parse_listen
from agent.fleet.rollout import (
    TERMINAL,
    FleetClient,
    advertised_host,
    new_id,
    probe,
    resolve_source,
    select_targets,
    wait_states,
)

_STYLE = {"active": "green", "failed": "bold red", "rolled_back": "yellow", "pending": "dim"}


class RolloutView:
    """Progress of one rollout: a live table with ``--watch``, else one line per change."""

    def __init__(self, title: str, watch: bool) -> None:
        self.title = title
        self.console = Console()
        self._seen: dict[str, tuple[Any, ...]] = {}
        self._live = Live(console=self.console, refresh_per_second=4) if watch else None
        self._rows: dict[str, dict[str, Any]] = {}
        if self._live is not None:
            self._live.start()

    def show(self, states: dict[str, dict[str, Any]]) -> None:
        self._rows.update(states)
        if self._live is not None:
            self._live.update(self.table())
            return
        for device, s in states.items():
            progress = s.get("progress")
            bucket = None if progress is None else int(progress * 10)
            key = (s.get("state"), bucket, s.get("error"))
            if self._seen.get(device) != key:
                self._seen[device] = key
                print(f"{device}: {_state_text(s)}", flush=True)

    def table(self) -> Table:
        table = Table(title=self.title)
        for col in ("device", "state", "progress", "error"):
            table.add_column(col)
        for device, s in sorted(self._rows.items()):
            state = str(s.get("state"))
            progress = s.get("progress")
            table.add_row(
                device,
                f"[{_STYLE.get(state, 'cyan')}]{state}[/]",
                "-" if progress is None else f"{100 * progress:.0f}%",
                str(s.get("error") or ""),
            )
        return table

    def close(self) -> None:
        if self._live is not None:
            self._live.update(self.table())
            self._live.stop()
            self._live = None


def _state_text(s: dict[str, Any]) -> str:
    text = str(s.get("state"))
    if s.get("state") == "downloading" and s.get("progress") is not None:
        text += f" {100 * s['progress']:.0f}%"
    if s.get("error"):
        text += f": {s['error']}"
    return text


# -- deploy -----------------------------------------------------------------------------------------
def configure_deploy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", help="network: a local file (served by this command) or an http(s):// / file:// URL"
    )
    parser.add_argument("--sha256", help="sha256 of the network (required with a URL)")
    parser.add_argument("--size", type=int, help="size in bytes (devices stop downloading beyond it)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", nargs="+", help="device ids (an offline one deploys when it connects)")
    target.add_argument("--all", action="store_true", help="every device with a retained status")
    target.add_argument(
        "--match", metavar="KEY=VALUE", help="devices whose status has KEY=VALUE (profile=x86-64)"
    )
    parser.add_argument(
        "--canary", type=int, default=0, help="first N online devices must succeed before the rest"
    )
    parser.add_argument("--max-failures", type=int, default=1, help="halt the rollout after K failed devices")
    parser.add_argument(
        "--runtime", choices=("onnx", "tflite", "tensorrt", "numpy"), help="override the profile"
    )
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="with --runtime")
    parser.add_argument("--id", help="deployment id (default d-<UTC time>-<random>)")
    parser.add_argument("--watch", action="store_true", help="live table of the devices' progress")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for each wave")
    parser.add_argument(
        "--probe-timeout", type=float, default=120.0, help="seconds for a canary's probe query"
    )
    parser.add_argument("--listen", default="0.0.0.0:0", help="where a local SOURCE is served (HOST:PORT)")
    parser.add_argument(
        "--advertise", help="host devices use to reach this machine (default: route to broker)"
    )
    parser.add_argument(
        "--transfer",
        choices=("http", "mqtt"),
        default="http",
        help="how a local SOURCE reaches devices: served over HTTP, or sent as retained chunks over "
        "MQTT (devices that reach only the broker)",
    )
    parser.add_argument(
        "--chunk-size", type=int, default=CHUNK_SIZE, help="bytes per chunk with --transfer mqtt"
    )


def command_deploy(args: argparse.Namespace) -> int:
    from agent.fleet.monitor import settings_from_args

    if args.canary < 0 or args.max_failures < 1:
        raise ConfigError("--canary must be >= 0 and --max-failures >= 1")
    settings = settings_from_args(args)
    url, file, sha256, size, name = resolve_source(args)
    if args.transfer == "mqtt":
        return _deploy_over_mqtt(args, settings, url, file, sha256, name)
    server = None
    if file is not None:
        host, port = parse_listen(args.listen)
        advertise = args.advertise or (host if host not in ("0.0.0.0", "::") else advertised_host(settings))
        server = ModelServer(file, host, port, advertise).start()
        url = server.url
        print(f"serving {file} at {url} while the rollout runs", flush=True)
    client = FleetClient(settings)
    client.connect()
    try:
        assert url is not None
        desired = {
            "action": "deploy",
            "network": name,
            "sha256": sha256,
            "size": size,
            "url": url,
            "runtime": args.runtime,
            "precision": args.precision,
        }
        return _deploy(args, settings, client, {k: v for k, v in desired.items() if v is not None})
    finally:
        client.close()
        if server is not None:
            server.close()


def _deploy_over_mqtt(
    args: argparse.Namespace, settings: Any, url: str | None, file: Path | None, sha256: str, name: str
) -> int:
    """``--transfer mqtt``: the file as retained chunks (``agent.fleet.chunks``), then the rollout;
    the chunks are cleared when no target still waits for them."""
    if file is None and url is not None and url.startswith("file://"):
        file = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    if file is None or not file.is_file():
        raise ConfigError("--transfer mqtt sends a file of this machine: give a local file as SOURCE")
    args.id = args.id or new_id()
    client = FleetClient(settings)
    client.connect()
    try:
        location = publish_model(client, file, sha256, name, args.chunk_size)
        count = -(-file.stat().st_size // args.chunk_size)
        print(f"sent {file} over MQTT as {count} retained chunks at {location}", flush=True)
        desired = {
            "action": "deploy",
            "network": name,
            "sha256": sha256,
            "size": file.stat().st_size,
            "url": location,
            "runtime": args.runtime,
            "precision": args.precision,
        }
        try:
            code = _deploy(args, settings, client, {k: v for k, v in desired.items() if v is not None})
        except ConfigError:  # refused before any desired state went out (no targets, ...)
            clear_model(client, sha256, count)
            raise
        waiting = [
            d
            for d, doc in client.desired.items()
            if doc.get("id") == args.id and (client.state_of(d, args.id) or {}).get("state") not in TERMINAL
        ]
        if waiting:
            print(
                f"the chunks stay on the broker for {', '.join(sorted(waiting))} (not done yet); "
                "`katago-edge fleet deployments --clean` removes them",
                flush=True,
            )
        else:
            clear_model(client, sha256, count)
            print(f"cleared the {count} chunks from the broker", flush=True)
        return code
    finally:
        client.close()


def _deploy(args: argparse.Namespace, settings: Any, client: FleetClient, desired: dict[str, Any]) -> int:
    targets = select_targets(client, args)
    if not targets:
        raise ConfigError("no devices match: `katago-edge fleet --once` lists them")
    dep_id = args.id or new_id()
    desired = {"id": dep_id, **desired, "issued": round(time.time(), 3)}
    online = [d for d in targets if client.online(d)]
    canaries = online[: args.canary]
    if len(canaries) < args.canary:
        raise ConfigError(f"--canary {args.canary}: only {len(online)} of the targets are online")
    record = {
        **desired,
        "targets": targets,
        "canary": canaries,
        "max_failures": args.max_failures,
        "state": "canary" if canaries else "rolling",
        "created": desired["issued"],
        "failures": {},
    }
    rollout_topic = client.topics.rollout(dep_id)
    client.publish(rollout_topic, record)
    print(
        f"deployment {dep_id}: {desired['network']} (sha256 {desired['sha256'][:16]}...) to {len(targets)} device(s)"
    )
    view = RolloutView(f"deployment {dep_id}", args.watch)
    failures: dict[str, str] = {}

    def state_of(device: str) -> dict[str, Any] | None:
        return client.state_of(device, dep_id)

    try:
        if canaries:
            print(f"canary: {', '.join(canaries)}", flush=True)
            before = {d: client.engine_failures(d) for d in canaries}
            for d in canaries:
                client.publish(client.topics.desired(d), desired)
            states = wait_states(canaries, state_of, args.timeout, view.show)
            for d in canaries:
                if states[d]["state"] != "active":
                    failures[d] = str(states[d].get("error") or states[d]["state"])
                    continue
                why = probe(settings, client, d, args.probe_timeout)
                if why is None and client.engine_failures(d) > before[d]:
                    why = "engine failures went up after the swap"
                if why is not None:
                    failures[d] = why
            if len(failures) >= args.max_failures:
                return _halt(client, record, rollout_topic, failures, [], view, reached_others=False)
        rest = [d for d in targets if d not in canaries]
        record["state"] = "rolling"
        client.publish(rollout_topic, record)
        for d in rest:
            client.publish(client.topics.desired(d), desired)
        waiting = [d for d in rest if client.online(d)]

        def too_many(states: dict[str, dict[str, Any]]) -> bool:
            failed = sum(1 for s in states.values() if s.get("state") == "failed")
            return len(failures) + failed >= args.max_failures

        states = wait_states(waiting, state_of, args.timeout, view.show, stop_when=too_many)
        failures.update({d: str(s.get("error")) for d, s in states.items() if s.get("state") == "failed"})
        if len(failures) >= args.max_failures:
            unstarted = [d for d in rest if state_of(d) is None and d not in failures]
            return _halt(client, record, rollout_topic, failures, unstarted, view, reached_others=True)
    finally:
        view.close()
    offline = [d for d in targets if d not in canaries and d not in waiting]
    record.update(state="done", failures=failures, offline=offline)
    client.publish(rollout_topic, record)
    active = sum(1 for d in canaries + waiting if d not in failures)
    print(f"deployment {dep_id}: {active} active, {len(failures)} failed", end="")
    print(
        f", {len(offline)} offline (they deploy when they connect: {', '.join(offline)})" if offline else ""
    )
    return 1 if failures else 0


def _halt(
    client: FleetClient,
    record: dict[str, Any],
    topic: str,
    failures: dict[str, str],
    unstarted: list[str],
    view: RolloutView,
    reached_others: bool,
) -> int:
    """Stop the rollout: withdraw the desired state from devices that have not started on it."""
    for d in unstarted:
        client.publish(client.topics.desired(d), None)
    record.update(state="halted", failures=failures, withdrawn=unstarted)
    client.publish(topic, record)
    view.close()
    for device, why in failures.items():
        print(f"{device}: failed: {why}")
    print(f"deployment {record['id']}: HALTED after {len(failures)} failure(s)", end="")
    if unstarted:
        print(f"; withdrawn from {', '.join(unstarted)} (not started yet)")
    else:
        print("; every target had started on it" if reached_others else "; no other device received it")
    return 1


# -- deployments ------------------------------------------------------------------------------------
def configure_deployments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--clean",
        action="store_true",
        help="remove the retained chunks of networks sent over MQTT (fleet deploy --transfer mqtt) "
        "that no running rollout sends",
    )


def device_states(client: FleetClient, record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for device in record.get("targets", []):
        state = client.state_of(device, record["id"])
        if state is None:
            desired = client.desired.get(device) or {}
            if desired.get("id") == record["id"]:
                state = {"state": "pending"}
            elif device in (record.get("withdrawn") or []):
                state = {"state": "withdrawn"}
            else:
                current = ((client.status.get(device) or {}).get("deployment") or {}).get("id")
                state = {"state": f"superseded by {current}" if current else "unknown"}
        out[device] = {k: state.get(k) for k in ("state", "progress", "error") if state.get(k) is not None}
    return out


def command_deployments(args: argparse.Namespace) -> int:
    from agent.fleet.monitor import settings_from_args

    client = FleetClient(settings_from_args(args))
    client.connect()
    try:
        records = sorted(client.rollouts.values(), key=lambda r: r.get("created") or 0)
        rows = [{**r, "devices": device_states(client, r)} for r in records]
        if args.clean:
            _clean(client, records)
    finally:
        client.close()
    if args.json:
        print(json.dumps({"ts": round(time.time(), 3), "deployments": rows}, indent=2))
        return 0
    table = Table(title=f"katago-edge deployments ({len(rows)})")
    for col in ("deployment", "network", "sha256", "state", "devices"):
        table.add_column(col)
    for r in rows:
        devices = ", ".join(f"{d}: {s['state']}" for d, s in r["devices"].items())
        table.add_row(
            r["id"], str(r.get("network")), str(r.get("sha256", ""))[:12], str(r.get("state")), devices
        )
    Console(width=max(Console().width, 150)).print(table)
    return 0


def _clean(client: FleetClient, records: list[dict[str, Any]]) -> None:
    """Clear the chunks of every network sent over MQTT except those a running rollout sends."""
    running = {r.get("sha256") for r in records if r.get("state") in ("canary", "rolling")}
    for sha256, manifest in sorted(client.models.items()):
        if sha256 in running:
            print(f"kept {manifest.get('network')} ({sha256[:12]}): a rollout is sending it")
            continue
        count = manifest.get("count")
        clear_model(client, sha256, count if isinstance(count, int) else 0)
        print(f"cleared {manifest.get('network')} ({sha256[:12]}): {count} chunks")


# -- rollback ---------------------------------------------------------------------------------------
def configure_rollback(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("deployment", help="the deployment to undo")
    parser.add_argument(
        "--to", metavar="PREVIOUS", help="an earlier deployment whose network to serve instead"
    )
    parser.add_argument("--device", nargs="+", help="only these devices (default: the deployment's targets)")
    parser.add_argument("--timeout", type=float, default=900.0)


def command_rollback(args: argparse.Namespace) -> int:
    from agent.fleet.monitor import settings_from_args

    client = FleetClient(settings_from_args(args))
    client.connect()
    try:
        return _rollback(args, client)
    finally:
        client.close()


def _rollback(args: argparse.Namespace, client: FleetClient) -> int:
    dep_id = args.deployment
    record = client.rollouts.get(dep_id)
    targets = (
        args.device
        or (record or {}).get("targets")
        or [d for d in client.devices() if ((client.status[d].get("deployment") or {}).get("id")) == dep_id]
    )
    if not targets:
        raise ConfigError(f"deployment {dep_id}: unknown (`katago-edge fleet deployments` lists them)")
    to = client.rollouts.get(args.to) if args.to else None
    if args.to and to is None:
        raise ConfigError(f"--to {args.to}: no such deployment record")
    rb_id = new_id("rb")
    sent: list[str] = []
    for device in targets:
        desired: dict[str, Any] = {"id": rb_id, "action": "rollback", "rollback_of": dep_id}
        if to is not None:
            desired.update({k: to[k] for k in ("network", "sha256", "size", "url") if k in to})
        else:
            dep = (client.status.get(device) or {}).get("deployment") or {}
            current, previous = dep.get("current") or {}, dep.get("previous") or {}
            back = previous if current.get("deployment") == dep_id else current
            if not back.get("sha256"):
                print(f"{device}: no previous network known; skipped")
                continue
            desired.update(network=back["network"], sha256=back["sha256"])
        client.publish(client.topics.desired(device), desired)
        sent.append(device)
    print(f"rollback {rb_id} of {dep_id} sent to {len(sent)} device(s)", flush=True)

    def state_of(device: str) -> dict[str, Any] | None:
        undone = client.state_of(device, dep_id)
        if undone is not None and undone.get("state") == "rolled_back":
            return undone
        return client.state_of(device, rb_id)

    view = RolloutView(f"rollback of {dep_id}", False)
    try:
        states = wait_states([d for d in sent if client.online(d)], state_of, args.timeout, view.show)
    finally:
        view.close()
    failed = {d: s for d, s in states.items() if s.get("state") != "rolled_back"}
    if record is not None:
        record.update(state="rolled_back" if not failed else "rollback failed", rolled_back_by=rb_id)
        client.publish(client.topics.rollout(dep_id), record)
    print(f"rollback of {dep_id}: {len(states) - len(failed)} rolled back, {len(failed)} failed")
    return 1 if failed else 0


# -- the table of subcommands -----------------------------------------------------------------------
SUBCOMMANDS = {
    "deploy": (configure_deploy, command_deploy, "publish a network as the desired state of devices"),
    "deployments": (configure_deployments, command_deployments, "list rollouts and each device's state"),
    "rollback": (configure_rollback, command_rollback, "put back the network a deployment replaced"),
    "serve-model": (configure_serve_model, command_serve_model, "serve a network file over HTTP"),
}


def add_rollout_commands(parser: argparse.ArgumentParser, broker_arguments: Any) -> None:
    """``fleet deploy|deployments|rollback|serve-model`` as subcommands of ``fleet``."""
    sub = parser.add_subparsers(dest="fleet_command", metavar="{deploy,deployments,rollback,serve-model}")
    for name, (configure, func, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
        if name != "serve-model":
            broker_arguments(p)
        p.set_defaults(fleet_func=func)
