"""``katago-edge fetch-model``: bring a network into the model store the agent reads.

The store is the one ``serve`` uses: ``AgentConfig.model_store_dir`` of the config ``serve``
would read (``--config`` names another), or ``--dest DIR``. The file's path goes to stdout (for
scripts); where it went and how to serve it to stderr. Fetching itself is
:func:`agent.models.fetch.fetch_model`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from agent.app.config import add_config_argument, find_config, load_config
from agent.errors import ConfigError
from agent.models.fetch import fetch_model


def agent_model_store(config: Path | None = None) -> tuple[Path, Path | None]:
    """The store the agent reads, and the config file that names it (None: the defaults).

    The config is looked up as ``katago-edge serve`` does (:func:`agent.app.config.find_config`), so
    this is the single default: ``AgentConfig.model_store_dir``.
    """
    path = find_config(config)
    if config is None and path is not None and not os.access(path, os.R_OK):
        # the installed agent's config is root:katago-edge 0640: a plain user cannot learn its store
        raise ConfigError(
            f"cannot read {path}, the agent config that names the model store: run as root "
            "(sudo katago-edge fetch-model ...), or give --config FILE or --dest DIR"
        )
    agent_config = load_config(path)
    return agent_config.model_store_dir, path


def hand_to_store_owner(path: Path, store: Path) -> None:
    """Run as root (``sudo katago-edge fetch-model``): give the fetched file, and the store folder
    if root just created it, to the owner of the folder above the store (the agent's state folder,
    owned by the service user after ``install.sh``), so the daemon can manage what it serves."""
    if os.geteuid() != 0:
        return
    owner = store.resolve().parent.stat()
    if owner.st_uid == 0:
        return
    for item in (store, path):
        info = item.stat()
        if info.st_uid == 0:
            os.chown(item, owner.st_uid, owner.st_gid)


def configure_fetch_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="PATH, http(s) URL, 'katrain' (PyPI katrain wheel) or a store name")
    add_config_argument(parser, "its model store")
    parser.add_argument("--dest", type=Path, help="store in this folder instead of the agent's model store")
    parser.add_argument("--sha256", help="expected sha256 of the network file (hex)")
    parser.add_argument("--force", action="store_true", help="download again even if the store has it")


def command_fetch_model(args: argparse.Namespace) -> int:
    """Print the stored file's path (stdout, for scripts), where that is and how to serve it (stderr)."""
    try:
        agent_store, config = agent_model_store(args.config)
    except ConfigError:
        if args.dest is None:
            raise
        agent_store, config = None, None  # --dest needs no config; only the hint is shorter
    path = fetch_model(args.source, args.dest or agent_store, args.sha256, force=args.force)
    if agent_store is not None and path.parent.resolve() == agent_store.resolve():
        hand_to_store_owner(path, agent_store)
    print(path)
    if agent_store is not None and path.parent.resolve() == agent_store.resolve():
        owner = (
            f"the model store of {config}" if config else "the agent's default model store; no config file"
        )
        print(f"stored in {path.parent} ({owner})", file=sys.stderr)
    elif agent_store is not None:
        print(f"stored in {path.parent}: not where the agent looks ({agent_store})", file=sys.stderr)
    else:
        print(f"stored in {path.parent}", file=sys.stderr)
    if config is not None:
        how = f'set model = "{path}" in {config}, then reload the agent (`systemctl reload katago-edge` or SIGHUP)'
    else:
        how = f'set model = "{path}" in the agent config, then restart the agent'
    print(f"to serve it: {how}; or run `katago-edge serve --model {path}`", file=sys.stderr)
    return 0
