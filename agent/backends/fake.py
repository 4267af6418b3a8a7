"""A deterministic fake ``NeuralNet`` for fast tests of search and protocol.

It computes plausible raw outputs from the V7 inputs in microseconds, with no weights:

* policy logits prefer points near the 3-4 lines and next to the last move, and a fixed
  per-point jitter (seeded) breaks ties, so searches have a clear but not absolute favourite;
* value logits follow ``(own stones - opponent stones + self-komi)`` so that captures and komi
  matter; the no-result logit is very negative;
* score values give a lead equal to that material balance, and ownership logits are +/-2 on
  stones and 0 elsewhere (side-to-move perspective, like a real net).

Outputs have the layout of a version-15 net (2 policy channels, 6 score values), so the
shared post-processing treats them exactly like a real network's. ``delay`` (seconds per
batch) lets tests and benchmarks imitate a slow accelerator.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from agent.backends.base import Cancel, NetInfo, NeuralNet, NNInputs, NNOutputs
from agent.errors import EvaluationCancelled
from agent.network.model import PostProcessParams


class _EventCancel(Cancel):
    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def cancel(self) -> None:
        self.cancelled = True
        self.event.set()


class FakeNet(NeuralNet):
    def __init__(
        self, *, seed: int = 1, delay: float = 0.0, max_batch_size: int = 0, name: str = "fake"
    ) -> None:
        self._info = NetInfo(
            name=name, model_version=15, runtime="fake", precision="fp32", max_batch_size=max_batch_size
        )
        rng = np.random.default_rng(seed)
        self._jitter = rng.normal(0.0, 0.3, size=19 * 19).astype(np.float32)
        ys, xs = np.mgrid[0:19, 0:19]
        self._delay = delay
        self._lock = threading.Lock()
        self.rows_evaluated = 0
        self.batches_evaluated = 0
        self._coords = (xs.astype(np.float32), ys.astype(np.float32))

    @property
    def info(self) -> NetInfo:
        return self._info

    @property
    def postprocess_params(self) -> PostProcessParams:
        return PostProcessParams(model_version=15, policy_channels=2)  # the layout FakeNet mimics

    def make_cancel(self) -> Cancel:
        return _EventCancel()

    def evaluate_cancellable(self, inputs: NNInputs, cancel: Cancel) -> NNOutputs:
        assert isinstance(cancel, _EventCancel)
        return self._evaluate(inputs, cancel)

    def evaluate(self, inputs: NNInputs) -> NNOutputs:
        return self._evaluate(inputs, None)

    def _evaluate(self, inputs: NNInputs, cancel: _EventCancel | None) -> NNOutputs:
        sp = inputs.spatial
        gl = inputs.global_
        n, _, h, w = sp.shape
        mask = sp[:, 0]
        xs, ys = self._coords[0][:h, :w], self._coords[1][:h, :w]
        # distance to the nearest board edge; the board may sit in any corner (symmetries)
        cols = mask.max(axis=1)  # [N, W]
        rows = mask.max(axis=2)  # [N, H]
        x0 = cols.argmax(axis=1)[:, None, None]
        x1 = (w - 1 - cols[:, ::-1].argmax(axis=1))[:, None, None]
        y0 = rows.argmax(axis=1)[:, None, None]
        y1 = (h - 1 - rows[:, ::-1].argmax(axis=1))[:, None, None]
        bx = cols.sum(axis=1)
        by = rows.sum(axis=1)
        dx = np.minimum(xs[None] - x0, x1 - xs[None])
        dy = np.minimum(ys[None] - y0, y1 - ys[None])
        line = np.minimum(dx, dy)
        pref = -0.6 * np.abs(line - 2.5)
        last = sp[:, 9]
        near_last = np.zeros_like(last)
        near_last[:, 1:, :] += last[:, :-1, :]
        near_last[:, :-1, :] += last[:, 1:, :]
        near_last[:, :, 1:] += last[:, :, :-1]
        near_last[:, :, :-1] += last[:, :, 1:]
        logits = pref + 1.5 * near_last + self._jitter.reshape(19, 19)[:h, :w][None]
        logits = np.where(mask > 0, logits, -30.0).reshape(n, h * w).astype(np.float32)
        policy = np.stack([logits, logits + 0.1], axis=1)
        own = sp[:, 1].sum(axis=(1, 2))
        opp = sp[:, 2].sum(axis=(1, 2))
        self_komi = gl[:, 5] * 20.0
        balance = own - opp + self_komi
        area = np.maximum(bx * by, 1.0)
        wl = balance / np.sqrt(area) * 1.5
        value = np.stack([wl, -wl, np.full(n, -8.0, np.float32)], axis=1).astype(np.float32)
        score = np.stack(
            [
                balance / 20.0,
                np.full(n, 1.0, np.float32),
                balance / 20.0,
                np.full(n, 0.5, np.float32),
                np.full(n, -1.0, np.float32),
                np.full(n, -1.0, np.float32),
            ],
            axis=1,
        ).astype(np.float32)
        ownership = (2.0 * (sp[:, 1] - sp[:, 2])).reshape(n, h * w).astype(np.float32)
        pass_logit = np.full((n, 2), -3.0, np.float32)
        if self._delay:
            if cancel is None:
                time.sleep(self._delay)
            elif cancel.event.wait(self._delay):
                raise EvaluationCancelled("evaluation cancelled")
        with self._lock:
            self.rows_evaluated += n
            self.batches_evaluated += 1
        return NNOutputs(
            policy=policy, policy_pass=pass_logit, value=value, score_value=score, ownership=ownership
        )
