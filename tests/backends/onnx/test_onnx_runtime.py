"""OnnxNet: loading graphs the model store built, interface checks, clear shape errors, providers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from edge_fixtures import model_file
from onnx import TensorProto, helper

from agent.backends.base import NNInputs
from agent.backends.onnx.builder import OnnxBuildOptions, build_onnx
from agent.backends.onnx.runtime import OnnxNet, resolve_providers
from agent.backends.registry import load_net
from agent.errors import EvaluationCancelled, InferenceError, NetworkFileError
from agent.network.reader import read_network


def _empty_board(n: int = 1, size: int = 19) -> NNInputs:
    spatial = np.zeros((n, 22, size, size), np.float32)
    spatial[:, 0] = 1.0
    return NNInputs(spatial, np.zeros((n, 19), np.float32))


def _graph(models_dir: Path, tmp_path: Path, board: int = 19) -> Path:
    model = build_onnx(
        read_network(model_file(models_dir, "b6c96")), OnnxBuildOptions(board_x=board, board_y=board)
    )
    path = tmp_path / f"b6c96-{board}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_onnx_runtime__loads_a_graph_and_refuses_a_katago_file(models_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(
        NetworkFileError, match="a KataGo network, not an ONNX graph: build it through the model store"
    ):
        OnnxNet(model_file(models_dir, "b6c96"))
    again = OnnxNet(_graph(models_dir, tmp_path), intra_op_threads=1)
    info = again.info
    assert (info.name, info.model_version, info.runtime, info.precision) == (
        "g170-b6c96-s175395328-d26788732",
        8,
        "onnx",
        "fp32",
    )
    assert again.postprocess_params.model_version == 8
    out = again.evaluate(_empty_board(3))
    assert out.policy.shape == (3, 1, 361) and out.score_value.shape == (3, 4)
    # empty board, komi 0 features: the three rows are identical
    assert np.allclose(out.value[0], out.value[2], atol=1e-6)


def test_onnx_runtime__a_cancelled_evaluation_stops_and_the_session_still_works(
    models_dir: Path, tmp_path: Path
) -> None:
    """The search abandons a speculative run through ``Cancel`` (onnxruntime's terminate flag):
    a cancelled run raises EvaluationCancelled, an uncancelled one returns what evaluate does."""
    net = OnnxNet(_graph(models_dir, tmp_path), intra_op_threads=1)
    inputs = _empty_board(1)
    ref = net.evaluate(inputs)
    token = net.make_cancel()
    assert token is not None
    same = net.evaluate_cancellable(inputs, token)
    assert np.array_equal(same.policy, ref.policy) and np.array_equal(same.value, ref.value)
    token = net.make_cancel()
    token.cancel()
    with pytest.raises(EvaluationCancelled):
        net.evaluate_cancellable(inputs, token)
    assert np.array_equal(net.evaluate(inputs).ownership, ref.ownership)


def test_onnx_runtime__wrong_buffer_size_says_got_and_expected(models_dir: Path, tmp_path: Path) -> None:
    net = OnnxNet(_graph(models_dir, tmp_path, board=9))
    assert (net.info.board_x, net.info.board_y) == (9, 9)
    with pytest.raises(InferenceError, match=r"got shape \[1, 22, 19, 19\], expected \[N, 22, 9, 9\]"):
        net.evaluate(_empty_board(1, 19))


def test_onnx_runtime__rejects_a_foreign_onnx_graph(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    with pytest.raises(NetworkFileError, match="not a katago-edge network graph"):
        OnnxNet(path)


def test_onnx_runtime__garbage_file_is_a_network_file_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x00not an onnx model at all")
    with pytest.raises(NetworkFileError, match="onnxruntime cannot load it"):
        OnnxNet(path)
    with pytest.raises(NetworkFileError, match="no such network file"):
        OnnxNet(tmp_path / "missing.onnx")


def test_onnx_runtime__unavailable_providers_fall_back_to_cpu(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    with caplog.at_level(logging.WARNING):
        providers = resolve_providers(
            ["TensorrtExecutionProvider", ("CUDAExecutionProvider", {"device_id": 0})], tmp_path
        )
    assert providers == ["CPUExecutionProvider"]
    assert "TensorrtExecutionProvider is not available" in caplog.text


def test_onnx_runtime__registry_loads_it_with_threads(models_dir: Path, tmp_path: Path) -> None:
    net = load_net(_graph(models_dir, tmp_path), runtime="onnx", threads=1)
    assert isinstance(net, OnnxNet) and net.info.runtime == "onnx"
