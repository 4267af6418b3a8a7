"""The lazy runtime registry: names map to classes imported only when chosen."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from edge_fixtures import model_file

from agent import runtime
from agent.errors import RuntimeUnavailable
from agent.network.writer import tiny_network
from agent.runtime.numpy_runtime import NumpyNet


def test_registry__numpy_loads_a_parsed_network() -> None:
    net = runtime.load_net(tiny_network(15), runtime="numpy")
    assert isinstance(net, NumpyNet) and net.info.model_version == 15
    assert net.postprocess_params.policy_channels == 2


def test_registry__unknown_runtime_lists_the_known_ones() -> None:
    with pytest.raises(
        RuntimeUnavailable, match="unknown runtime 'cuda'; known: numpy, onnx, tflite, tensorrt"
    ):
        runtime.load_net(tiny_network(15), runtime="cuda")


def test_registry__missing_dependency_names_the_pip_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = runtime.RuntimeSpec("agent.runtime.not_installed_runtime:Missing", "onnx")
    monkeypatch.setitem(runtime.RUNTIMES, "onnx", spec)
    with pytest.raises(RuntimeUnavailable, match=r"pip install 'katago-edge\[onnx\]'"):
        runtime.runtime_class("onnx")


def test_registry__choosing_numpy_imports_no_optional_runtime(models_dir: Path) -> None:
    heavy = ("onnxruntime", "tensorrt", "ai_edge_litert", "tensorflow")
    before = {m for m in heavy if m in sys.modules}
    runtime.load_net(model_file(models_dir, "b6c96"))
    assert {m for m in heavy if m in sys.modules} == before
