"""``katago-edge status``: what the running daemon serves, asked over its local socket.

Sends ``{"action": "query_health"}`` to the daemon's Unix socket (the path from ``--socket``,
else the agent config's ``[socket] path``) and prints the answer: profile, engine, the network
that serves (runtime, precision, provider, file, verification) and every fallback with its
reason, uptime, queries in flight and the device's temperatures. ``--json`` prints the health
document as it came. Exit code 0 when the daemon answered and serves what its profile asked for,
3 when it serves a fallback, 1 when it cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any

from agent.app.config import add_config_argument, find_config, load_config
from agent.errors import AgentError

EXIT_FALLBACK = 3


def configure_status(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", type=Path, help="the daemon's Unix socket (default: from the config)")
    add_config_argument(parser, "the socket it names")
    parser.add_argument("--json", action="store_true", help="print the health document as JSON")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")


def ask_health(path: Path, timeout: float = 10.0) -> dict[str, Any]:
    """The daemon's health document, asked over its Unix socket."""
    request = json.dumps({"id": "katago-edge-status", "action": "query_health"}) + "\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(request.encode())
            buffer = b""
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    reply = json.loads(line)
                    if reply.get("id") == "katago-edge-status":
                        if "error" in reply:
                            raise AgentError(f"the daemon at {path} answered: {reply['error']}")
                        health: dict[str, Any] = reply["health"]
                        return health
    except (OSError, ValueError) as exc:
        raise AgentError(
            f"cannot reach the daemon at {path}: {exc} (is it running? `systemctl status katago-edge`)"
        ) from exc
    raise AgentError(f"the daemon at {path} closed the connection without answering")


def _socket_path(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    return Path(load_config(find_config(args.config)).socket.path)


def render(health: dict[str, Any]) -> str:
    """The health document as a few lines for a person."""
    agent = health.get("agent") or {}
    network = health.get("network") or {}
    serving = network.get("serving") or {}
    requested = network.get("requested") or {}
    lines = [
        f"profile   {agent.get('profile')}   engine {agent.get('engine')}   "
        f"uptime {agent.get('uptime_s')} s   version {agent.get('version')}",
    ]
    if serving:
        via = f" via {serving['provider']}" if serving.get("provider") else ""
        verify = serving.get("verify") or {}
        lines.append(
            f"serving   {serving.get('runtime')}/{serving.get('precision')}{via}   "
            f"verify {verify.get('status', '-')}   {serving.get('file')}"
        )
    fallbacks = network.get("fallbacks") or []
    if fallbacks:
        via = f" via {requested['provider']}" if requested.get("provider") else ""
        lines.append(f"FALLBACK  asked for {requested.get('runtime')}/{requested.get('precision')}{via}:")
        lines.extend(
            f"          {f['runtime']}/{f['precision']}{' via ' + f['provider'] if f.get('provider') else ''}: {f['reason']}"
            for f in fallbacks
        )
    service = health.get("service") or {}
    if service:
        lines.append(
            "queries   "
            + "   ".join(f"{k} {v}" for k, v in service.items() if isinstance(v, int | float) and k != "time")
        )
    device = health.get("device") or {}
    temps = device.get("temperatures_c") or device.get("temperatures") or {}
    if isinstance(temps, dict) and temps:
        lines.append("temps     " + "   ".join(f"{k} {v}" for k, v in temps.items()))
    return "\n".join(lines)


def command_status(args: argparse.Namespace) -> int:
    health = ask_health(_socket_path(args), args.timeout)
    if args.json:
        print(json.dumps(health, indent=2))
    else:
        print(render(health))
    fallbacks = ((health.get("network") or {}).get("fallbacks")) or []
    if fallbacks:
        print(
            f"katago-edge status: serving a fallback ({len(fallbacks)} entries could not serve)",
            file=sys.stderr,
        )
        return EXIT_FALLBACK
    return 0
