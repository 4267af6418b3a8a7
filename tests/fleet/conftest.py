"""Fixtures for the rollout tests: a short temp folder (Unix socket paths) and a real Mosquitto."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_support import MOSQUITTO, NEEDS_MOSQUITTO, Mosquitto


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kr-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def broker(short_tmp: Path) -> Iterator[Mosquitto]:
    if MOSQUITTO is None:
        pytest.skip(NEEDS_MOSQUITTO)
    workdir = short_tmp / "broker"
    workdir.mkdir()
    b = Mosquitto(workdir)
    b.start()
    yield b
    b.stop()
