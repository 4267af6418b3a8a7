"""Command-line entry point: ``katago-edge <command> ...``.

Every subcommand lives in its own module as two functions, imported only when that command is
chosen (so ``katago-edge detect`` on a Pi never imports onnxruntime)::

    def configure(parser: argparse.ArgumentParser) -> None: ...   # add arguments
    def command_<name>(args: argparse.Namespace) -> int: ...        # run, return exit code

The table below maps the command name to ``"module:function"`` and a one-line help.
``run(argv) -> int`` is what tests call; tracebacks are shown only with ``--verbose``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from agent import __version__
from agent.errors import AgentError
from agent.logs import setup_logging

logger = logging.getLogger(__name__)


class CommandSpec(NamedTuple):
    target: str  # "module:command_function"; the module also has configure(parser)
    help: str


COMMANDS: dict[str, CommandSpec] = {
    "detect": CommandSpec("agent.cli.detect:command_detect", "hardware found, profile chosen, and why"),
    "check-config": CommandSpec(
        "agent.cli.detect:command_check_config", "validate an agent config and the shipped profiles"
    ),
    "fetch-model": CommandSpec(
        "agent.cli.fetch_model:command_fetch_model", "get a KataGo network into the model store"
    ),
    "rawnn": CommandSpec(
        "agent.cli.rawnn:command_rawnn", "positions in (JSON lines), raw network outputs out"
    ),
    "convert": CommandSpec(
        "agent.cli.convert:command_convert", "convert a network to ONNX / TFLite / TensorRT"
    ),
    "verify": CommandSpec(
        "agent.cli.convert:command_verify", "accuracy of a converted network vs the FP32 reference"
    ),
    "analysis": CommandSpec(
        "agent.cli.analysis:command_analysis", "stdin/stdout drop-in for `katago analysis`"
    ),
    "models": CommandSpec(
        "agent.cli.models:command_models", "list, show and prune the model store's converted networks"
    ),
    "serve": CommandSpec("agent.app.daemon:command_serve", "run the agent daemon"),
    "status": CommandSpec(
        "agent.cli.status:command_status", "what the running daemon serves (asked over its socket)"
    ),
    "query": CommandSpec("agent.fleet.monitor:command_query", "send one analysis request over MQTT"),
    "fleet": CommandSpec(
        "agent.cli.fleet:command_fleet",
        "live table of every device's status and health; deploy, deployments, rollback, serve-model",
    ),
    "bench": CommandSpec("agent.cli.bench:command_bench", "measure this device"),
}


def _load(
    target: str,
) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]:
    module_name, func_name = target.split(":")
    module = importlib.import_module(module_name)
    configure = getattr(module, "configure_" + func_name.removeprefix("command_"), None)
    if configure is None:
        configure = module.configure
    return configure, getattr(module, func_name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="katago-edge",
        description="KataGo networks on edge devices: detect, convert, serve analysis, report health.",
    )
    parser.add_argument("--version", action="version", version=f"katago-edge {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging; tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, spec in COMMANDS.items():
        sub.add_parser(name, help=spec.help, add_help=False)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run one subcommand; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    # Split global options from the command so that only the chosen command is imported.
    idx = next((i for i, a in enumerate(argv) if a in COMMANDS), None)
    if idx is None:
        top.parse_args(argv)  # handles --help / --version / errors
        top.print_help()
        return 2
    global_args = top.parse_args(argv[:idx])
    name = argv[idx]
    setup_logging(global_args.verbose, global_args.quiet)
    spec = COMMANDS[name]
    sub = argparse.ArgumentParser(prog=f"katago-edge {name}", description=spec.help)
    try:
        configure, func = _load(spec.target)
    except ImportError as exc:
        print(f"katago-edge {name}: not available in this installation ({exc})", file=sys.stderr)
        return 2
    configure(sub)
    args = sub.parse_args(argv[idx + 1 :])
    args.verbose = global_args.verbose
    try:
        return int(func(args))
    except AgentError as exc:
        if global_args.verbose:
            logger.exception("%s failed", name)
        print(f"katago-edge {name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
