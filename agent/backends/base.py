"""The ``NeuralNet`` interface every runtime implements (``agent.backends.<name>.runtime``).

A runtime evaluates batches of encoded positions and returns the network's raw outputs; the
containers and their shapes are ``agent.network.tensors`` (re-exported here). Post-processing is
shared code (``agent.network.postprocess``), fed by each runtime's ``postprocess_params``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from agent.network.model import PostProcessParams
from agent.network.tensors import F32, NNInputs, NNOutputs

__all__ = ["F32", "Cancel", "NNInputs", "NNOutputs", "NetInfo", "NeuralNet"]


@dataclass(frozen=True)
class NetInfo:
    """What a runtime says about the network it runs (for health, query_models and logs)."""

    name: str
    model_version: int
    runtime: str  # "numpy", "onnx", "tflite", "tensorrt", "fake"
    precision: str  # "fp32", "fp16", "int8"
    board_x: int = 19  # buffer size the runtime was built for
    board_y: int = 19
    max_batch_size: int = 0  # 0 = unbounded / dynamic


class Cancel:
    """Abandons a running ``NeuralNet.evaluate_cancellable`` when ``cancel()`` is called from
    another thread (made by ``NeuralNet.make_cancel``; one token per evaluation)."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def require_postprocess(params: PostProcessParams | None, path: object, how: str) -> PostProcessParams:
    """``params``, or the error for a converted file that carries none (TFLite, TensorRT)."""
    if params is None:
        from agent.errors import NetworkFileError

        raise NetworkFileError(
            f"{path}: carries no post-processing parameters (no katago-edge metadata in the file, "
            f"no manifest beside it); {how}"
        )
    return params


class NeuralNet(ABC):
    """A loaded network that evaluates batches of encoded positions. Thread-safe ``evaluate``."""

    @property
    @abstractmethod
    def info(self) -> NetInfo: ...

    @property
    @abstractmethod
    def postprocess_params(self) -> PostProcessParams:
        """The header values shared post-processing needs (multipliers, version, policy channels):
        from the network itself, or carried in the converted file's metadata or its manifest."""

    @abstractmethod
    def evaluate(self, inputs: NNInputs) -> NNOutputs:
        """Evaluate a batch; raises ``agent.errors.InferenceError`` on runtime failure."""

    def make_cancel(self) -> Cancel | None:
        """A token that can cut one ``evaluate_cancellable`` short, or None where this runtime
        cannot abandon an evaluation once started (then nothing should start one speculatively)."""
        return None

    def evaluate_cancellable(self, inputs: NNInputs, cancel: Cancel) -> NNOutputs:
        """``evaluate``, abandoned early once ``cancel.cancel()`` is called: it then raises
        ``agent.errors.EvaluationCancelled``."""
        out = self.evaluate(inputs)
        if cancel.cancelled:
            from agent.errors import EvaluationCancelled

            raise EvaluationCancelled("evaluation cancelled")
        return out

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources."""
