from __future__ import annotations

import pytest

from agent import cli


def test_cli__help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.run(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_cli__no_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run([]) == 2
