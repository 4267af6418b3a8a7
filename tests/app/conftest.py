"""Fixtures for the daemon tests (helpers live in daemon_support.py: ``from conftest import`` is
ambiguous with the per-folder conftests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_support import NotifySocket

# ``short_tmp`` (a short temp folder for Unix socket paths) and ``broker`` come from tests/mqtt_fixtures.py.


@pytest.fixture
def notify_socket(short_tmp: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(short_tmp / "notify")
    yield ns
    ns.close()
