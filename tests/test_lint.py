"""``make lint`` as part of the test suite.

CI (``.ci/run``) runs ``make test`` only, so ruff findings in ``agent/`` and ``tests/`` went
unseen until someone ran ``make lint`` by hand (#16: two test files had drifted from
``ruff format``). These run the same two commands the Makefile's ``lint`` target runs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_lint__ruff_clean_like_make_lint(command: list[str]) -> None:
    beside = Path(sys.executable).parent / "ruff"  # the venv's ruff, as the Makefile uses
    ruff = str(beside) if beside.exists() else shutil.which("ruff")
    if ruff is None:
        pytest.skip("needs ruff (the dev extra: pip install -e '.[dev]', as `make test` does)")
    result = subprocess.run(
        [ruff, *command, "agent", "tests"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"ruff {' '.join(command)} agent tests:\n{result.stdout}{result.stderr}"
