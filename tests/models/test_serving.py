"""Which entry serves: fallbacks in order, each with its reason; required entries do not fall back."""

from __future__ import annotations

from pathlib import Path

import pytest
from edge_fixtures import model_file

from agent.errors import RuntimeUnavailable
from agent.models.serving import RuntimeEntry, open_network
from agent.models.store import ModelStore

pytestmark = pytest.mark.needs_models

GPU_CHAIN = (
    RuntimeEntry("tensorrt", "fp16"),
    RuntimeEntry("onnx", "fp16", provider="CUDAExecutionProvider"),
    RuntimeEntry("onnx", "fp32"),
)


def test_serving__falls_back_in_order_and_says_why(models_dir: Path, model_store: ModelStore) -> None:
    net, report = open_network(model_file(models_dir, "b6c96"), GPU_CHAIN, model_store)
    assert (net.info.runtime, net.info.precision) == ("onnx", "fp32")
    data = report.to_json()
    assert data["requested"] == {"runtime": "tensorrt", "precision": "fp16", "provider": None}
    assert data["serving"]["runtime"] == "onnx" and data["serving"]["precision"] == "fp32"
    assert Path(data["serving"]["file"]).parent == model_store.root / "onnx"
    assert data["serving"]["verify"]["status"] == "passed"
    reasons = [(f["runtime"], f["provider"], f["reason"]) for f in data["fallbacks"]]
    assert reasons[0][0] == "tensorrt" and "TensorRT is not installed" in reasons[0][2]
    assert reasons[1][:2] == ("onnx", "CUDAExecutionProvider")
    assert "has no CUDAExecutionProvider" in reasons[1][2] and "onnxruntime-gpu" in reasons[1][2]
    assert "FALLBACK from tensorrt/fp16" in report.summary()


def test_serving__a_required_entry_fails_instead_of_falling_back(
    models_dir: Path, model_store: ModelStore
) -> None:
    chain = (RuntimeEntry("onnx", "fp16", provider="CUDAExecutionProvider", required=True), GPU_CHAIN[2])
    with pytest.raises(
        RuntimeUnavailable, match=r"marked required and cannot serve: onnxruntime .* has no CUDA"
    ):
        open_network(model_file(models_dir, "b6c96"), chain, model_store)


def test_serving__profile_thresholds_decide_and_a_refusal_is_a_fallback(
    models_dir: Path, model_store: ModelStore
) -> None:
    chain = (RuntimeEntry("onnx", "fp16"), RuntimeEntry("onnx", "fp32"))
    impossible = {"fp16": (("policy_top1_agreement", ">=", 1.01),)}
    net, report = open_network(model_file(models_dir, "b6c96"), chain, model_store, thresholds=impossible)
    assert net.info.precision == "fp32"
    (fallback,) = report.fallbacks
    assert fallback["precision"] == "fp16"
    assert "refused by verification: policy_top1_agreement" in fallback["reason"]
