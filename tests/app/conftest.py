"""Fixtures for the daemon tests (helpers live in daemon_support.py: ``from conftest import`` is
ambiguous with the per-folder conftests)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_support import MOSQUITTO, NEEDS_MOSQUITTO, Mosquitto, NotifySocket


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp folder: Unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ke-", dir="/tmp"))
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


@pytest.fixture
def notify_socket(short_tmp: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(short_tmp / "notify")
    yield ns
    ns.close()
