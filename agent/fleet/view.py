"""Presentation for ``katago-edge fleet`` (rich table, live view) and ``katago-edge query``.

``query`` builds a KataGo analysis query from ``--moves`` (``B:Q16 W:D4``, or bare points that
alternate starting with black, or KataGo's JSON ``[["B","Q16"],...]``) or from ``--sgf FILE``,
sends it to one device (``--device``) or to the shared fleet topic (``--fleet``), prints partial
results as they come (``--report-every``) and the final analysis as a table (or the raw
responses with ``--json``). Exit codes: 0 answered, 1 error reply, 3 no reply in ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.table import Table

from agent.errors import QueryError, TransportError
from agent.transports.mqtt.settings import MqttSettings


class FleetRows(Protocol):
    """What the live table reads of ``agent.fleet.monitor.FleetMonitor`` (which imports this
    module for its commands, so this one does not import it back)."""

    def rows(self, stale_after_s: float = 90.0) -> list[dict[str, Any]]: ...


EXIT_TIMEOUT = 3
_STATE_STYLE = {"online": "green", "stale": "yellow", "offline": "red", "stopped": "dim", "unknown": "dim"}


def _fmt(value: Any, spec: str = "", unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:{spec}}{unit}" if spec else f"{value}{unit}"


def render_table(rows: list[dict[str, Any]], warn_temp: float = 70.0, hot_temp: float = 80.0) -> Table:
    table = Table(title=f"katago-edge fleet ({len(rows)} devices)")
    for col in (
        "device",
        "state",
        "seen",
        "profile",
        "engine",
        "serving",
        "network",
        "deploy",
        "temp",
        "throttle",
        "cpu",
        "mem",
        "evals/s",
        "queue",
        "errors",
    ):
        table.add_column(
            col,
            justify="right"
            if col in ("seen", "temp", "cpu", "mem", "evals/s", "queue", "errors")
            else "left",
        )
    for r in rows:
        temp = r["temperature_c"]
        temp_style = (
            "bold red"
            if temp is not None and temp >= hot_temp
            else "yellow"
            if temp is not None and temp >= warn_temp
            else ""
        )
        throttled = r["throttled"]
        throttle_text = (
            ",".join(throttled)
            if isinstance(throttled, list) and throttled
            else ("yes" if throttled is True else "-")
        )
        row_style = "on dark_red" if (temp is not None and temp >= hot_temp) or r["errors"] else ""
        table.add_row(
            r["device"],
            f"[{_STATE_STYLE.get(r['state'], '')}]{r['state']}[/]",
            _fmt(r["last_seen_s"], ".0f", " s"),
            _fmt(r["profile"]),
            _fmt(r["engine"]),
            _serving_cell(r),
            _network_cell(r),
            _deploy_cell(r),
            f"[{temp_style}]{_fmt(temp, '.1f', ' °C')}[/]" if temp_style else _fmt(temp, ".1f", " °C"),
            f"[red]{throttle_text}[/]" if throttle_text != "-" else throttle_text,
            _fmt(r["cpu_percent"], ".0f", "%"),
            _fmt(r["memory_percent"], ".0f", "%"),
            _fmt(r["evals_per_s"], ".1f"),
            str(r["queue"]),
            f"[bold red]{r['errors']}[/]" if r["errors"] else "0",
            style=row_style,
        )
    return table


def _serving_cell(row: dict[str, Any]) -> str:
    """What serves; flagged when it is a fallback (the reasons are in ``fleet --json``)."""
    text = _fmt(row.get("serving"))
    fallbacks = row.get("fallbacks") or []
    status = row.get("status") or {}
    if fallbacks or status.get("fallback"):
        return f"[yellow]{text} FALLBACK[/]"
    return text


def _network_cell(row: dict[str, Any]) -> str:
    name, sha = row.get("network"), row.get("network_sha256")
    text = _fmt(name) + (f" {sha[:8]}" if sha else "")
    return f"{text} [red]verify {row['verify']}[/]" if row.get("verify") == "failed" else text


def _deploy_cell(row: dict[str, Any]) -> str:
    state = row.get("deployment")
    if not state:
        return "-"
    if state.endswith(" failed"):
        return f"[bold red]{state}[/]"
    return f"[green]{state}[/]" if state.endswith(" active") else f"[cyan]{state}[/]"


def wide_console() -> Console:
    """A console at least 200 columns wide: the 15 columns must not fold on pipes / narrow terminals."""
    console = Console()
    console.width = max(console.width, 200)
    return console


def run_live(monitor: FleetRows, args: argparse.Namespace) -> None:
    from rich.live import Live

    table = render_table(monitor.rows(args.stale_after), args.warn_temp, args.hot_temp)
    with Live(table, console=wide_console(), refresh_per_second=4) as live:
        while True:
            time.sleep(args.refresh)
            live.update(render_table(monitor.rows(args.stale_after), args.warn_temp, args.hot_temp))


# -- query ------------------------------------------------------------------------------------------
def configure_query_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", help="device id to ask")
    target.add_argument("--fleet", action="store_true", help="any idle device (shared fleet topic)")
    position = parser.add_mutually_exclusive_group()
    position.add_argument("--moves", nargs="*", default=[], help="B:Q16 W:D4 ... or Q16 D4 ... (alternating)")
    position.add_argument("--sgf", type=Path, help="SGF file: position after its main line")
    parser.add_argument("--visits", type=int, help="maxVisits")
    parser.add_argument("--rules", default=None, help="rules (default: SGF's, else tromp-taylor)")
    parser.add_argument("--komi", type=float, default=None)
    parser.add_argument("--board-size", type=int, default=19)
    parser.add_argument("--id", default=None, help="query id (default: random)")
    parser.add_argument("--report-every", type=float, default=None, help="reportDuringSearchEvery (s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the final reply")
    parser.add_argument("--expiry", type=int, default=60, help="request Message Expiry Interval (s)")
    parser.add_argument("--json", action="store_true", help="print every response as one JSON line")


def parse_moves(tokens: list[str]) -> list[list[str]]:
    """``["B:Q16", "W:D4"]`` / ``["Q16", "D4"]`` / ``['[["B","Q16"]]']`` -> KataGo's ``moves`` list."""
    if len(tokens) == 1 and tokens[0].lstrip().startswith("["):
        try:
            moves = json.loads(tokens[0])
        except ValueError as exc:
            raise QueryError(f"--moves: not JSON: {exc}", "moves") from exc
        if not isinstance(moves, list):
            raise QueryError("--moves: JSON must be a list of [player, move]", "moves")
        return [list(m) for m in moves]
    out: list[list[str]] = []
    for i, token in enumerate(tokens):
        player, sep, point = token.partition(":")
        if not sep:
            player, point = ("B" if i % 2 == 0 else "W"), token
        if player.upper() not in ("B", "W"):
            raise QueryError(f"--moves: bad player in {token!r} (use B:Q16 or W:D4)", "moves")
        out.append([player.upper(), point])
    return out


def build_query(args: argparse.Namespace) -> dict[str, Any]:
    query: dict[str, Any] = {"id": args.id or f"q-{os.urandom(4).hex()}"}
    if args.sgf is not None:
        from agent.game.board import BLACK, EMPTY
        from agent.game.sgf import parse_sgf

        try:
            game = parse_sgf(args.sgf.read_text(encoding="utf-8", errors="replace"))
        except OSError as exc:
            raise QueryError(f"cannot read {args.sgf}: {exc.strerror}") from exc
        geo = game.geometry
        colour = {BLACK: "B"}
        query["moves"] = [[colour.get(c, "W"), geo.to_gtp(loc)] for loc, c in game.moves]
        query["initialStones"] = [
            [colour.get(c, "W"), geo.to_gtp(loc)] for loc, c in game.setup if c != EMPTY
        ]
        query.update(boardXSize=game.x_size, boardYSize=game.y_size)
        if game.first_player is not None:
            query["initialPlayer"] = colour.get(game.first_player, "W")
        query["rules"] = args.rules or game.rules_text or "tromp-taylor"
        query["komi"] = args.komi if args.komi is not None else (game.komi if game.komi is not None else 7.5)
    else:
        query["moves"] = parse_moves(args.moves)
        query.update(boardXSize=args.board_size, boardYSize=args.board_size)
        query["rules"] = args.rules or "tromp-taylor"
        query["komi"] = args.komi if args.komi is not None else 7.5
    if args.visits is not None:
        query["maxVisits"] = args.visits
    if args.report_every is not None:
        query["reportDuringSearchEvery"] = args.report_every
    return query


def render_analysis(response: dict[str, Any]) -> Table:
    root = response.get("rootInfo") or {}
    title = (
        f"{response.get('id')} turn {response.get('turnNumber')}: winrate {_fmt(root.get('winrate'), '.3f')}, "
        f"lead {_fmt(root.get('scoreLead'), '+.1f')}, visits {_fmt(root.get('visits'))}"
    )
    table = Table(title=title)
    for col in ("move", "visits", "winrate", "lead", "prior", "pv"):
        table.add_column(col, justify="left" if col in ("move", "pv") else "right")
    for m in response.get("moveInfos") or []:
        table.add_row(
            str(m.get("move")),
            _fmt(m.get("visits")),
            _fmt(m.get("winrate"), ".3f"),
            _fmt(m.get("scoreLead"), "+.1f"),
            _fmt(m.get("prior"), ".3f"),
            " ".join(m.get("pv") or [])[:60],
        )
    return table


def run_query(args: argparse.Namespace, settings: MqttSettings) -> int:
    from agent.transports.mqtt.client import MqttRequester

    query = build_query(args)
    requester = MqttRequester(settings)
    topic = requester.topics.fleet_request if args.fleet else requester.topics.device_request(args.device)
    console = Console()
    err = Console(stderr=True)

    def on_response(r: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(r), flush=True)
        elif r.get("isDuringSearch"):
            root = r.get("rootInfo") or {}
            err.print(f"… {root.get('visits')} visits, winrate {_fmt(root.get('winrate'), '.3f')}")

    requester.connect(min(args.timeout, 15.0))
    try:
        corr = requester.send(topic, query, expiry_s=args.expiry, on_response=on_response)
        try:
            pending = requester.wait(corr, args.timeout)
        except TransportError as exc:
            err.print(f"katago-edge query: {exc} (is device {args.device or '(fleet)'} online?)")
            return EXIT_TIMEOUT
    finally:
        requester.close()
    failed = False
    for r in pending.responses:
        if "error" in r:
            failed = True
            if not args.json:
                err.print(f"error{' in ' + r['field'] if 'field' in r else ''}: {r['error']}")
        elif "warning" in r and not args.json:
            err.print(f"warning ({r.get('field')}): {r['warning']}")
        elif r.get("isDuringSearch") is False and not args.json:
            console.print(render_analysis(r))
            console.print(f"round trip {1000 * ((pending.finished or pending.sent) - pending.sent):.0f} ms")
    return 1 if failed else 0
