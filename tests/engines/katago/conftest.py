"""Fixtures for the real KataGo binary (katrain 1.20.0's KataGo v1.18.1, OpenCL on PoCL).

The binary comes from ``$KATAGO_EDGE_KATAGO_BINARY`` if set, else from the katrain wheel, downloaded
once into ``~/.cache/katago-edge`` (``$KATAGO_EDGE_CACHE``) and reused by later runs. Without an
OpenCL driver or the wheel the tests skip with "needs the KataGo binary", which CI turns into a
failure (``KATAGO_EDGE_REQUIRE=katago``).

Engines use ``opencl_tuning = "generic"``: KataGo's own first-run tuning takes ~7 minutes on
PoCL with two cores, the generic parameter set starts in ~3 s.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kg_helpers import fast_settings

from agent.engines.katago_binary import (
    KataGoBinary,
    binary_from_path,
    default_cache_dir,
    ensure_katrain_katago,
    opencl_available,
)
from agent.engines.katago_process import KataGoEngine
from agent.errors import EngineError

NEEDS = "needs the KataGo binary"
B6_FILE = "g170-b6c96-s175395328-d26788732.bin.gz"


@pytest.fixture(scope="session")
def katago_binary() -> KataGoBinary:
    explicit = os.environ.get("KATAGO_EDGE_KATAGO_BINARY")
    try:
        if explicit:
            return binary_from_path(Path(explicit))
        missing = opencl_available()
        if missing is not None:
            pytest.skip(f"{NEEDS}: {missing}")
        return binary_from_path(ensure_katrain_katago(default_cache_dir()), source="katrain")
    except EngineError as exc:
        pytest.skip(f"{NEEDS}: {exc}")


@pytest.fixture(scope="session")
def b6_model(models_dir: Path) -> Path:
    path = models_dir / B6_FILE
    if not path.is_file():
        pytest.skip(f"needs real KataGo networks: {B6_FILE} not in {models_dir}")
    return path


@pytest.fixture(scope="session")
def shared_engine(
    katago_binary: KataGoBinary, b6_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KataGoEngine]:
    """One child for the read-only tests (deterministic: ``nnRandomize = false``)."""
    settings = fast_settings(tmp_path_factory.mktemp("katago-shared"), extra={"nnRandomize": False})
    engine = KataGoEngine(katago_binary, b6_model, settings).start()
    yield engine
    engine.close(timeout=20.0)
