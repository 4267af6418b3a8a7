"""The ``NeuralNet`` interface every runtime implements, and its input/output containers.

A runtime evaluates a *batch* of already-encoded positions (V7 features, symmetry already applied
to ``spatial`` by the caller) and returns the network's **raw** outputs, exactly what the graph
computes, in the side-to-move perspective and in the *symmetrised* frame. Post-processing (policy
optimism, softmax, multipliers, un-symmetrising, White's perspective) is shared code in
``agent.network.postprocess`` so that every runtime is judged on the same raw numbers.

Shapes (N = batch, H = W = 19 buffer unless a runtime is built for a smaller buffer)::

    NNInputs.spatial   float32 [N, 22, H, W]   channel 0 is the on-board mask
    NNInputs.global_   float32 [N, 19]
    NNOutputs.policy   float32 [N, Cp, H*W]    Cp policy channels (1, 2 or 4)
    NNOutputs.policy_pass float32 [N, Cp]
    NNOutputs.value    float32 [N, 3]          win / loss / no-result logits
    NNOutputs.score_value float32 [N, S]       S = 1..6 score-value channels (version dependent)
    NNOutputs.ownership float32 [N, H*W]       ownership logits (pre-tanh)
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
