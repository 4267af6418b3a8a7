"""Shared fixtures: real KataGo networks and reference outputs from ../shared.

Tests that need real networks use the ``models_dir`` fixture and ``edge_fixtures.model_file``
(import helpers from ``edge_fixtures``, never from ``conftest``: several folders have a conftest.py
and the name is ambiguous when the whole suite runs). Outside CI
they skip with a message saying how to get a network; in CI (.ci/run) a skip of such a test fails
the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from edge_fixtures import HOW_TO_GET

REPO = Path(__file__).resolve().parent.parent


def _models_dir() -> Path | None:
    env = os.environ.get("KATAGO_EDGE_MODELS")
    if env and Path(env).is_dir():
        return Path(env)
    guess = REPO.parent / "shared" / "models"
    return guess if guess.is_dir() else None


def _reference_dir() -> Path | None:
    env = os.environ.get("KATAGO_EDGE_REFERENCE")
    if env and Path(env).is_dir():
        return Path(env)
    models = _models_dir()
    for cand in ([models.parent / "reference"] if models else []) + [REPO.parent / "shared" / "reference"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def models_dir() -> Path:
    d = _models_dir()
    if d is None:
        pytest.skip("needs real KataGo networks: " + HOW_TO_GET)
    return d


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    d = _reference_dir()
    if d is None:
        pytest.skip("needs KataGo reference outputs: set KATAGO_EDGE_REFERENCE (CI: ../shared/reference)")
    return d


# --- CI: required resources must not be skipped --------------------------------------------------
_REQUIRE_MARKERS = {
    "models": ("needs real KataGo networks", "needs KataGo reference outputs", "not in "),
    "mosquitto": ("needs mosquitto",),
    "katago": ("needs the KataGo binary",),
}


def _required_skip(reason: str) -> str | None:
    wanted = {w.strip() for w in os.environ.get("KATAGO_EDGE_REQUIRE", "").split(",") if w.strip()}
    for key in wanted:
        if any(marker in reason for marker in _REQUIRE_MARKERS.get(key, ())):
            return key
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        key = _required_skip(reason)
        if key is not None:
            report.outcome = "failed"
            report.longrepr = f"required resource '{key}' missing in CI (KATAGO_EDGE_REQUIRE): {reason}"
