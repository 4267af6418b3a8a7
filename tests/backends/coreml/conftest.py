"""Core ML packages of the shared networks, built once per session (each costs 5-30 s)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from edge_fixtures import model_file

pytest.importorskip("coremltools", reason="Core ML tests need the coreml extra: pip install -e '.[coreml]'")


@dataclass(frozen=True)
class Built:
    """A saved package, the build that made it, and the ONNX graph of the same network."""

    path: Path
    build: Any  # agent.backends.coreml.builder.CoreMLBuild
    network: Any
    onnx: Any


@pytest.fixture(scope="session")
def coreml_package(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Built]:
    """``(network key, precision) -> Built``, each built and saved once per session."""
    from agent.backends.coreml.builder import build_coreml, save_package
    from agent.backends.onnx.builder import build_onnx
    from agent.network.reader import read_network

    root = tmp_path_factory.mktemp("coreml")
    built: dict[tuple[str, str], Built] = {}
    networks: dict[str, tuple[Any, Any]] = {}

    def get(key: str, precision: str) -> Built:
        if (key, precision) not in built:
            if key not in networks:
                net = read_network(model_file(models_dir, key))
                networks[key] = (net, build_onnx(net))
            net, onnx_model = networks[key]
            build = build_coreml(net, precision)
            path = save_package(build.model, root / f"{key}.{precision}.mlpackage")
            built[key, precision] = Built(path, build, net, onnx_model)
        return built[key, precision]

    return get
