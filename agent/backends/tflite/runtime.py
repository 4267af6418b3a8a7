"""``NeuralNet`` over a ``.tflite`` file with LiteRT (``ai-edge-litert``), falling back to ``tflite-runtime``.

The model comes from :mod:`agent.backends.tflite.builder`: its ``serving_default`` signature takes
``spatial`` ``[N, 22, H, W]`` and ``global_in`` ``[N, 19]`` (``global`` is a Python keyword, which signatures reject) and returns the raw outputs named like the
fields of ``NNOutputs``. XNNPACK is LiteRT's default CPU path; the thread count comes from the
profile. Full-integer models (``int8-full``) have int8 input and output tensors: inputs are
quantized and outputs dequantized here with each tensor's scale and zero point.

An interpreter is not thread-safe, so ``evaluate`` holds a lock; the signature runner resizes the
input tensors (and re-plans memory) only when the batch size changes.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from agent.backends.base import NetInfo, NeuralNet, NNInputs, NNOutputs, require_postprocess
from agent.errors import InferenceError, RuntimeUnavailable
from agent.network.model import PostProcessParams

logger = logging.getLogger(__name__)

OUTPUT_NAMES = ("policy", "policy_pass", "value", "score_value", "ownership")
SIGNATURE = "serving_default"


def interpreter_class() -> Any:
    """LiteRT's ``Interpreter``, else tflite-runtime's; the error names the pip extra."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise RuntimeUnavailable(
                "no TFLite runtime: `pip install 'katago-edge[tflite]'` (ai-edge-litert) or tflite-runtime"
            ) from exc
    return Interpreter


def _quantize(arr: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return arr.astype(np.float32, copy=False)
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(arr / scale + zero), info.min, info.max).astype(detail["dtype"])


def _dequantize(arr: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if arr.dtype == np.float32:
        return arr
    scale, zero = detail["quantization"]
    return ((arr.astype(np.float32) - zero) * scale).astype(np.float32)


class TFLiteNet(NeuralNet):
    def __init__(
        self,
        path: Path,
        *,
        threads: int = 0,
        name: str = "",
        model_version: int = 0,
        precision: str = "fp32",
        postprocess: PostProcessParams | None = None,
    ) -> None:
        self.path = Path(path)
        self._post = postprocess
        interp_cls = interpreter_class()
        try:
            self._interp = interp_cls(model_path=str(path), num_threads=threads or None)
            self._runner = self._interp.get_signature_runner(SIGNATURE)
        except (ValueError, RuntimeError) as exc:
            raise InferenceError(f"{path}: not a katago-edge TFLite model: {exc}") from exc
        if self._post is None:  # not from a manifest: those the writer stored in the file itself
            from agent.backends.tflite.writer import read_postprocess_metadata

            self._post = read_postprocess_metadata(self.path)
        self._in = self._runner.get_input_details()
        self._out = self._runner.get_output_details()
        missing = ({"spatial", "global_in"} - set(self._in)) | (set(OUTPUT_NAMES) - set(self._out))
        if missing:
            raise InferenceError(f"{path}: TFLite model lacks tensors {sorted(missing)}")
        shape = self._in["spatial"]["shape"]
        if len(shape) != 4 or shape[1] != 22:
            raise InferenceError(f"{path}: spatial input has shape {list(shape)}, expected [N, 22, H, W]")
        self._board_y, self._board_x = int(shape[2]), int(shape[3])
        self._lock = threading.Lock()
        self._info = NetInfo(
            name or path.stem, model_version, "tflite", precision, self._board_x, self._board_y
        )

    @property
    def info(self) -> NetInfo:
        return self._info

    @property
    def postprocess_params(self) -> PostProcessParams:
        return require_postprocess(
            self._post, self.path, "convert it with `katago-edge convert`, which writes both"
        )

    def evaluate(self, inputs: NNInputs) -> NNOutputs:
        feeds = {
            "spatial": _quantize(inputs.spatial, self._in["spatial"]),
            "global_in": _quantize(inputs.global_, self._in["global_in"]),
        }
        with self._lock:
            try:
                raw = self._runner(**feeds)
            except (ValueError, RuntimeError) as exc:
                raise InferenceError(f"TFLite inference failed: {exc}") from exc
            res = {k: np.array(_dequantize(raw[k], self._out[k]), dtype=np.float32) for k in OUTPUT_NAMES}
        return NNOutputs(
            res["policy"], res["policy_pass"], res["value"], res["score_value"], res["ownership"]
        )
