"""``katago-edge fleet``: the live table of the fleet (``agent.fleet.monitor``), and its rollout
subcommands ``deploy``, ``deployments``, ``rollback`` and ``serve-model``
(``agent.fleet.rollout_commands``). Broker options go after the subcommand."""

from __future__ import annotations

import argparse

from agent.fleet import monitor
from agent.fleet.rollout_commands import add_rollout_commands


def configure_fleet(parser: argparse.ArgumentParser) -> None:
    monitor.configure_fleet(parser)
    add_rollout_commands(parser, monitor.add_broker_arguments)


def command_fleet(args: argparse.Namespace) -> int:
    func = getattr(args, "fleet_func", None)
    if func is not None:
        return int(func(args))
    return monitor.command_fleet(args)
