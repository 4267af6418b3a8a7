"""The runtime registry: names map to classes; third-party packages load only when a net does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from edge_fixtures import model_file

from agent.backends import registry as runtime
from agent.backends.numpy.runtime import NumpyNet
from agent.errors import RuntimeUnavailable
from agent.network.writer import tiny_network


def test_registry__numpy_loads_a_parsed_network() -> None:
    net = runtime.load_net(tiny_network(15), runtime="numpy")
    assert isinstance(net, NumpyNet) and net.info.model_version == 15
    assert net.postprocess_params.policy_channels == 2


def test_registry__unknown_runtime_lists_the_known_ones() -> None:
    with pytest.raises(
        RuntimeUnavailable, match="unknown runtime 'cuda'; known: numpy, onnx, tflite, tensorrt"
    ):
        runtime.load_net(tiny_network(15), runtime="cuda")


def test_registry__missing_dependency_names_the_pip_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the onnx extra were not installed
    (tmp_path / "x.onnx").write_bytes(b"")
    with pytest.raises(RuntimeUnavailable, match=r"pip install 'katago-edge\[onnx\]'"):
        runtime.load_net(tmp_path / "x.onnx", runtime="onnx")


def test_registry__file_suffix_names_the_runtime() -> None:
    assert runtime.runtime_for_file("a/b.onnx") == "onnx"
    assert runtime.runtime_for_file("b.TFLITE") == "tflite"
    assert runtime.runtime_for_file("b.plan") == "tensorrt"
    assert runtime.runtime_for_file("net.bin.gz") is None


def test_registry__choosing_numpy_imports_no_optional_runtime(models_dir: Path) -> None:
    heavy = ("onnxruntime", "tensorrt", "ai_edge_litert", "tensorflow")
    before = {m for m in heavy if m in sys.modules}
    runtime.load_net(model_file(models_dir, "b6c96"))
    assert {m for m in heavy if m in sys.modules} == before
