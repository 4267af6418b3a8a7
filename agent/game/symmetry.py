"""The 8 board symmetries of KataGo's NN inputs (spec §3.9).

A symmetry is a 3-bit integer ``s``: bit 0 flips Y (reverses rows), bit 1 flips X (reverses
columns), bit 2 transposes. Inputs apply flipY, then flipX, then transpose; outputs (policy
without the pass entry, ownership) get the inverse: transpose, then flipX, then flipY. The whole
``nn_y x nn_x`` buffer is transformed, so a small board in a 19x19 buffer moves to another
corner. Transposing symmetries (4-7) are ignored when the buffer is not square, as in KataGo.
KataGo's ``SymmetryHelpers::invert`` maps 5 <-> 6 and every other symmetry to itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

A = npt.NDArray[Any]

NUM_SYMMETRIES = 8


def apply_symmetry(a: A, s: int) -> A:
    """Transform the last two axes ``[..., H, W]`` of an input plane stack."""
    if s & 1:
        a = a[..., ::-1, :]
    if s & 2:
        a = a[..., :, ::-1]
    if s & 4 and a.shape[-1] == a.shape[-2]:
        a = a.swapaxes(-1, -2)
    return a


def invert_symmetry_map(a: A, s: int) -> A:
    """Undo ``apply_symmetry`` on an output map ``[..., H, W]`` (policy without pass, ownership)."""
    if s & 4 and a.shape[-1] == a.shape[-2]:
        a = a.swapaxes(-1, -2)
    if s & 2:
        a = a[..., :, ::-1]
    if s & 1:
        a = a[..., ::-1, :]
    return a


def invert_symmetry_policy(policy: np.ndarray, s: int, nn_x: int = 19, nn_y: int = 19) -> np.ndarray:
    """Un-symmetrise a flat policy of ``nn_x*nn_y`` (+ optional pass) entries on its last axis."""
    n = nn_x * nn_y
    board = policy[..., :n].reshape(*policy.shape[:-1], nn_y, nn_x)
    out = np.ascontiguousarray(invert_symmetry_map(board, s)).reshape(*policy.shape[:-1], n)
    if policy.shape[-1] > n:
        out = np.concatenate([out, policy[..., n:]], axis=-1)
    return out


def inverse(s: int) -> int:
    """The symmetry that undoes ``s`` as a single input-style transform (5 <-> 6)."""
    return {5: 6, 6: 5}.get(s, s)


def transform_xy(x: int, y: int, s: int, nn_x: int = 19, nn_y: int = 19) -> tuple[int, int]:
    """Where buffer point ``(x, y)`` lands after ``apply_symmetry(., s)``."""
    if s & 1:
        y = nn_y - 1 - y
    if s & 2:
        x = nn_x - 1 - x
    if s & 4 and nn_x == nn_y:
        x, y = y, x
    return x, y
