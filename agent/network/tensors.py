"""What goes into and comes out of a KataGo network, whatever runs it.

A runtime (``agent.backends``) evaluates a *batch* of already-encoded positions (V7 features,
symmetry already applied to ``spatial`` by the caller) and returns the network's **raw** outputs,
exactly what the graph computes, in the side-to-move perspective and in the *symmetrised* frame.
Post-processing (``agent.network.postprocess``) is shared code, so every runtime is judged on the
same raw numbers. ``PositionSet`` is a stored batch of encoded positions with stable ids
(calibration and verification sets).

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

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class NNInputs:
    spatial: F32
    global_: F32

    def __post_init__(self) -> None:
        if self.spatial.ndim != 4 or self.spatial.shape[1] != 22:
            raise ValueError(f"spatial: got shape {self.spatial.shape}, expected [N, 22, H, W]")
        if self.global_.ndim != 2 or self.global_.shape[1] != 19:
            raise ValueError(f"global: got shape {self.global_.shape}, expected [N, 19]")
        if self.spatial.shape[0] != self.global_.shape[0]:
            raise ValueError(
                f"batch mismatch: spatial has {self.spatial.shape[0]} rows, global {self.global_.shape[0]}"
            )

    @property
    def batch_size(self) -> int:
        return int(self.spatial.shape[0])


@dataclass(frozen=True)
class NNOutputs:
    policy: F32
    policy_pass: F32
    value: F32
    score_value: F32
    ownership: F32

    @property
    def batch_size(self) -> int:
        return int(self.value.shape[0])

    def row(self, i: int) -> NNOutputs:
        """One batch row, keeping the batch axis (size 1)."""
        s = slice(i, i + 1)
        return NNOutputs(
            self.policy[s], self.policy_pass[s], self.value[s], self.score_value[s], self.ownership[s]
        )


@dataclass(frozen=True)
class PositionSet:
    """Encoded positions with their ids and a description of where they came from."""

    spatial: F32
    global_: F32
    ids: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.ids)

    def batches(self, size: int) -> Iterable[NNInputs]:
        for i in range(0, len(self), size):
            yield NNInputs(self.spatial[i : i + size], self.global_[i : i + size])
