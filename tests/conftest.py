"""Shared fixtures: real KataGo networks and reference outputs from ../shared.

Tests that need real networks use the ``models_dir`` fixture and ``edge_fixtures.model_file``
(import helpers from ``edge_fixtures``, never from ``conftest``: several folders have a conftest.py
and the name is ambiguous when the whole suite runs). Outside CI
they skip with a message saying how to get a network; in CI (.ci/run) a skip of such a test fails
the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from edge_fixtures import HOW_TO_GET

REPO = Path(__file__).resolve().parent.parent

pytest_plugins = ["mqtt_fixtures"]  # the MQTT broker, agent and requester fixtures, for every folder


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


@pytest.fixture(scope="session", autouse=True)
def _model_store_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One model store for the whole run (``KATAGO_EDGE_ARTIFACT_STORE``, inherited by the CLI and daemon
    subprocesses too): each network x recipe is built and verified once per run, never taken
    from a developer's own cache."""
    path = tmp_path_factory.mktemp("model-store")
    old = os.environ.get("KATAGO_EDGE_ARTIFACT_STORE")
    os.environ["KATAGO_EDGE_ARTIFACT_STORE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("KATAGO_EDGE_ARTIFACT_STORE", None)
    else:
        os.environ["KATAGO_EDGE_ARTIFACT_STORE"] = old


@pytest.fixture(scope="session")
def model_store(_model_store_dir: Path) -> Any:
    """The run's model store (see ``_model_store_dir``)."""
    from agent.models.store import ModelStore

    return ModelStore(_model_store_dir)
