"""``katago-edge models list|show|prune``: see and clean the model store.

``list`` shows every artifact (network, runtime, precision, size, verification), every cached
refusal (with its reason) and interrupted builds; ``show ID`` prints one artifact's manifest (or
one refusal's record); ``prune`` removes interrupted builds and, as asked, refusals
(``--refused``, so the next start tries those conversions again), artifacts older than N days
(``--older-than DAYS``) or everything (``--all``). The store folder is the agent config's
``artifact_store`` (``<cache_dir>/models`` unless set; ``--config``), or ``--store DIR``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.app.config import add_config_argument, find_config, load_config
from agent.errors import ConfigError
from agent.models.manifest import read_manifest
from agent.models.store import ModelStore, StoreEntry


def configure_models(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "show", "prune"])
    parser.add_argument("ident", nargs="?", help="with show: an entry id (from list) or file name")
    parser.add_argument("--store", type=Path, metavar="DIR", help="model store folder")
    add_config_argument(parser, "its cache_dir holds the store")
    parser.add_argument("--json", action="store_true", help="JSON output")
    parser.add_argument("--refused", action="store_true", help="prune: also forget cached refusals")
    parser.add_argument("--older-than", type=float, metavar="DAYS", help="prune: artifacts older than this")
    parser.add_argument("--all", action="store_true", help="prune: everything")


def store_from_args(args: argparse.Namespace) -> ModelStore:
    if args.store:
        return ModelStore(args.store)
    config = load_config(find_config(args.config))
    return ModelStore(config.artifact_store_dir)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _verify_text(entry: StoreEntry) -> str:
    if entry.kind == "refused":
        return f"REFUSED: {entry.detail.get('reason')}"
    if entry.kind == "incomplete":
        return "interrupted build (no manifest): prune removes it"
    verify = entry.detail.get("verify") or {}
    return str(verify.get("status", "-"))


def _print_list(store: ModelStore, entries: list[StoreEntry]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"model store {store.root}", title_justify="left")
    for col in ("id", "network", "runtime", "precision", "size", "created", "verification"):
        table.add_column(col)
    for e in entries:
        table.add_row(e.ident, e.network, e.runtime, e.precision, _size(e.size), e.created, _verify_text(e))
    console = Console()
    if not console.is_terminal:  # a pipe or a log: one line per entry, nothing folded
        console.width = max(console.width, 200)
    console.print(table)
    console.print(f"{len(entries)} entries, {_size(sum(e.size for e in entries))}")


def command_models(args: argparse.Namespace) -> int:
    store = store_from_args(args)
    if args.action == "list":
        entries = store.entries()
        if args.json:
            print(json.dumps([e.to_json() for e in entries], indent=2))
        else:
            _print_list(store, entries)
        return 0
    if args.action == "show":
        if not args.ident:
            raise ConfigError("models show: which entry? (an id from `katago-edge models list`)")
        entry = store.find(args.ident)
        if entry.kind == "artifact":
            manifest = read_manifest(entry.path)
            data = manifest.to_json() if manifest else entry.to_json()
        elif entry.kind == "refused":
            data = json.loads(entry.path.read_text())
        else:
            data = entry.to_json()
        print(json.dumps(data, indent=2))
        return 0
    removed = store.prune(everything=args.all, refused=args.refused, older_than_days=args.older_than)
    if args.json:
        print(json.dumps([str(p) for p in removed], indent=2))
    else:
        for path in removed:
            print(f"removed {path}")
        print(f"{len(removed)} files removed from {store.root}")
    return 0
