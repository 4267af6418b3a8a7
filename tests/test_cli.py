from __future__ import annotations

import pytest

from agent.cli import main as cli


def test_cli__help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.run(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_cli__no_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run([]) == 2


def test_cli__every_command_module_loads_with_its_parser() -> None:
    """The command table names modules by string: each one must import and configure a parser."""
    import argparse

    for name, spec in cli.COMMANDS.items():
        configure, func = cli._load(spec.target)
        parser = argparse.ArgumentParser(prog=f"katago-edge {name}")
        configure(parser)
        assert callable(func), name
