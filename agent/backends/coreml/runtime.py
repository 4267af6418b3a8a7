"""Core ML ``.mlpackage`` as a :class:`~agent.backends.base.NeuralNet` (macOS only).

Core ML runs models on macOS (and iOS); ``coremltools`` on Linux converts and reads specs but
cannot predict. The one call that needs Core ML is the prediction, a :data:`Predict` function
from input arrays to output arrays. By default it is ``MLModel(path).predict`` (loaded on first
use; :class:`~agent.errors.RuntimeUnavailable` on Linux); ``predict=`` replaces it, which is how
the numerical ``verify`` path is tested on Linux (with the prediction faked at that seam only).

The package's metadata (``katago.*``, read from its spec, works anywhere) gives the name, model
version, precision, buffer size and post-processing parameters.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agent.backends.base import NetInfo, NeuralNet, NNInputs, NNOutputs
from agent.backends.coreml.builder import MAX_BATCH
from agent.backends.coreml.program import INPUT_GLOBAL, INPUT_SPATIAL
from agent.backends.onnx.builder import OUTPUT_NAMES
from agent.errors import InferenceError, RuntimeUnavailable
from agent.network.model import PostProcessParams

logger = logging.getLogger(__name__)

#: input arrays by name -> output arrays by name (Core ML's ``MLModel.predict``)
Predict = Callable[[dict[str, np.ndarray]], Mapping[str, Any]]


def can_predict() -> bool:
    """Whether Core ML can run a model here (macOS)."""
    return platform.system() == "Darwin"


def coreml_predict(path: Path) -> Predict:
    """``MLModel(path).predict``: only on macOS (Core ML is not available elsewhere)."""
    if not can_predict():
        raise RuntimeUnavailable(
            f"{path}: Core ML runs models only on macOS/iOS (this is {platform.system()}); "
            "on Linux `katago-edge verify` runs the structural check instead"
        )
    from agent.backends.coreml.builder import import_coremltools

    ct = import_coremltools()
    model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.ALL)
    predict: Predict = model.predict
    return predict


class CoreMLNet(NeuralNet):
    """A ``.mlpackage`` evaluated through Core ML (or through ``predict`` when given)."""

    def __init__(
        self, path: Path, *, predict: Predict | None = None, metadata: Mapping[str, str] | None = None
    ):
        self.path = Path(path)
        if metadata is None:
            from agent.backends.coreml.structure import package_metadata

            metadata = package_metadata(self.path)
        self._meta = dict(metadata)
        self._predict = predict or coreml_predict(self.path)
        post = self._meta.get("katago.postprocess")
        self._post = PostProcessParams.from_dict(json.loads(post)) if post else None
        self._info = NetInfo(
            name=self._meta.get("katago.name", self.path.stem),
            model_version=int(self._meta.get("katago.model_version", "0")),
            runtime="coreml",
            precision=self._meta.get("katago.precision", "fp16"),
            board_x=int(self._meta.get("katago.board_x", "19")),
            board_y=int(self._meta.get("katago.board_y", "19")),
            max_batch_size=MAX_BATCH,
        )

    @property
    def info(self) -> NetInfo:
        return self._info

    @property
    def postprocess_params(self) -> PostProcessParams:
        from agent.backends.base import require_postprocess

        return require_postprocess(self._post, self.path, "rebuild it with `katago-edge convert --to coreml`")

    def evaluate(self, inputs: NNInputs) -> NNOutputs:
        parts = [self._evaluate(chunk) for chunk in _chunks(inputs, MAX_BATCH)]
        return NNOutputs(*(np.concatenate([getattr(p, f) for p in parts]) for f in OUTPUT_NAMES))

    def _evaluate(self, inputs: NNInputs) -> NNOutputs:
        feed = {
            INPUT_SPATIAL: np.ascontiguousarray(inputs.spatial, np.float32),
            INPUT_GLOBAL: np.ascontiguousarray(inputs.global_, np.float32),
        }
        try:
            out = self._predict(feed)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise InferenceError(f"{self.path.name}: Core ML prediction failed: {exc}") from exc
        missing = [n for n in OUTPUT_NAMES if n not in out]
        if missing:
            raise InferenceError(f"{self.path.name}: Core ML outputs lack {', '.join(missing)}")
        n = inputs.batch_size
        arrays = [np.asarray(out[name], np.float32) for name in OUTPUT_NAMES]
        for name, arr in zip(OUTPUT_NAMES, arrays, strict=True):
            if arr.shape[0] != n:
                raise InferenceError(f"{self.path.name}: output {name} has {arr.shape[0]} rows, expected {n}")
        return NNOutputs(*arrays)


def _chunks(inputs: NNInputs, size: int) -> list[NNInputs]:
    n = inputs.batch_size
    return [NNInputs(inputs.spatial[i : i + size], inputs.global_[i : i + size]) for i in range(0, n, size)]
