"""ONNX Runtime implementation of :class:`NeuralNet` (``OnnxNet``).

``OnnxNet(path)`` loads a ``.onnx`` file (any precision made by the model store or ``katago-edge
convert``) or the bytes of one. A KataGo network is refused with a message pointing at the model
store (``agent.models.store``), the one place that builds, verifies and caches graphs.

Execution providers are configurable; the default is onnxruntime's CPU provider. For NVIDIA
devices pass ``providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"]`` (package
``onnxruntime-gpu``): the TensorRT EP gets an engine cache folder so engines are built once per
device. Missing providers are dropped with a warning; CPU is always the last fallback (the model
store checks a profile's provider before it gets here, so there that fallback is visible).

On load the session's input shapes are checked and one warm-up evaluation (an empty full buffer)
runs, so a wrong or corrupt file fails at start-up with a "got X, expected Y" message rather than
on the first query.

Intra-op threads do not spin-wait between parallel sections or between runs by default
(``allow_spinning=False``, onnxruntime's ``session.intra_op.allow_spinning`` = 0): a spinning
thread keeps a core busy that the search's Python (tree, features, post-processing) or another
process needs. On the 2-vCPU shared test machine (load 3-5) b6c96 FP32 with 2 intra-op threads
went from 40-78 to 74-120 evals/s at batch 1 and from 45-48 to 66-85 at batch 2, CPU per
evaluation from ~15 to ~8.5 ms; with 1 thread the two settings tie. ``allow_spinning=True``
restores onnxruntime's default (lowest latency on an otherwise idle, dedicated CPU).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.backends.base import Cancel, NetInfo, NeuralNet, NNInputs, NNOutputs
from agent.backends.optional import import_optional
from agent.errors import (
    EvaluationCancelled,
    InferenceError,
    NetworkFileError,
)
from agent.fsutil import default_cache_dir
from agent.network.model import PostProcessParams

logger = logging.getLogger(__name__)

ProviderSpec = str | tuple[str, dict[str, Any]]
OUTPUTS = ("policy", "policy_pass", "value", "score_value", "ownership")
KATAGO_SUFFIXES = (".bin.gz", ".txt.gz", ".bin", ".txt", ".gz")


def _import_ort() -> Any:
    return import_optional(
        "onnxruntime",
        "onnxruntime is not installed: pip install 'katago-edge[onnx]' (or onnxruntime-gpu on NVIDIA)",
    )


def is_katago_file(path: Path) -> bool:
    return path.name.lower().endswith(KATAGO_SUFFIXES)


def resolve_providers(
    requested: Sequence[ProviderSpec] | None, engine_cache: Path | None = None
) -> list[Any]:
    """Keep the available providers of ``requested`` (CPU appended), adding TensorRT cache options."""
    ort = _import_ort()
    available = set(ort.get_available_providers())
    result: list[Any] = []
    for spec in requested or ["CPUExecutionProvider"]:
        name, opts = (spec, {}) if isinstance(spec, str) else (spec[0], dict(spec[1]))
        if name not in available:
            logger.warning(
                "onnxruntime provider %s is not available here (have %s); skipping", name, sorted(available)
            )
            continue
        if name == "TensorrtExecutionProvider" and engine_cache is not None:
            engine_cache.mkdir(parents=True, exist_ok=True)
            opts.setdefault("trt_engine_cache_enable", True)
            opts.setdefault("trt_engine_cache_path", str(engine_cache))
            opts.setdefault("trt_timing_cache_enable", True)
        result.append((name, opts) if opts else name)
    if "CPUExecutionProvider" not in [p if isinstance(p, str) else p[0] for p in result]:
        result.append("CPUExecutionProvider")
    return result


class _RunCancel(Cancel):
    """A ``Cancel`` backed by onnxruntime's ``RunOptions.terminate`` (checked between kernels)."""

    def __init__(self, run_options: Any) -> None:
        super().__init__()
        self.run_options = run_options

    def cancel(self) -> None:
        self.cancelled = True
        self.run_options.terminate = True


class OnnxNet(NeuralNet):
    """A network evaluated by onnxruntime; see the module docstring for the options."""

    def __init__(
        self,
        model: str | Path | bytes,
        *,
        providers: Sequence[ProviderSpec] | None = None,
        intra_op_threads: int | None = None,
        threads: int | None = None,
        cache_dir: Path | None = None,
        warmup: bool = True,
        allow_spinning: bool = False,
    ) -> None:
        ort = _import_ort()
        source: str | bytes
        if isinstance(model, bytes):
            path, source = Path("<in-memory ONNX model>"), model
        else:
            path = Path(model)
            if not path.is_file():
                raise NetworkFileError(f"{path}: no such network file")
            if is_katago_file(path):
                raise NetworkFileError(
                    f"{path}: a KataGo network, not an ONNX graph: build it through the model store "
                    "(agent.models.store.ModelStore.prepare, or `katago-edge convert --to onnx`)"
                )
            source = str(path)
        self.path = path
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads or threads:
            options.intra_op_num_threads = int(intra_op_threads or threads or 0)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        engine_cache = (cache_dir or default_cache_dir()) / "trt-engines"
        self.providers = resolve_providers(providers, engine_cache)
        try:
            self._session = ort.InferenceSession(source, options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise NetworkFileError(f"{path}: onnxruntime cannot load it: {exc}") from exc
        meta = self._session.get_modelmeta().custom_metadata_map
        self._check_interface(path, meta)
        self._info = NetInfo(
            name=meta.get("katago.name", path.stem),
            model_version=int(meta.get("katago.model_version", "0")),
            runtime="onnx",
            precision=meta.get("katago.precision", "fp32"),
            board_x=self._width,
            board_y=self._height,
        )
        self._post = self._params(meta)
        if warmup:
            self._warmup()

    def _check_interface(self, path: Path, meta: dict[str, str]) -> None:
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        if set(inputs) != {"spatial", "global"} or sorted(outputs) != sorted(OUTPUTS):
            raise NetworkFileError(
                f"{path}: not a katago-edge network graph: got inputs {sorted(inputs)} and outputs "
                f"{outputs}, expected inputs ['global', 'spatial'] and outputs {list(OUTPUTS)}"
            )
        shape = inputs["spatial"]
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]) or shape[1] != 22:
            raise NetworkFileError(f"{path}: input 'spatial' has shape {shape}, expected [N, 22, H, W]")
        self._height, self._width = int(shape[2]), int(shape[3])
        if "katago.postprocess" not in meta:
            logger.warning("%s carries no katago.postprocess metadata; using default multipliers", path)

    @staticmethod
    def _params(meta: dict[str, str]) -> PostProcessParams:
        import json

        raw = meta.get("katago.postprocess")
        if raw:
            return PostProcessParams.from_dict(json.loads(raw))
        return PostProcessParams(model_version=int(meta.get("katago.model_version", "8")), policy_channels=1)

    def _warmup(self) -> None:
        spatial = np.zeros((1, 22, self._height, self._width), np.float32)
        spatial[:, 0] = 1.0
        out = self.evaluate(NNInputs(spatial, np.zeros((1, 19), np.float32)))
        area = self._height * self._width
        if out.policy.shape[-1] != area or out.ownership.shape != (1, area) or out.value.shape != (1, 3):
            raise NetworkFileError(
                f"{self.path}: warm-up outputs policy {out.policy.shape}, ownership {out.ownership.shape}, "
                f"value {out.value.shape}; expected [1, Cp, {area}], [1, {area}], [1, 3]"
            )

    @property
    def postprocess_params(self) -> PostProcessParams:
        return self._post

    @property
    def info(self) -> NetInfo:
        return self._info

    def evaluate(self, inputs: NNInputs) -> NNOutputs:
        return self._run(inputs, None)

    def make_cancel(self) -> Cancel:
        return _RunCancel(_import_ort().RunOptions())

    def evaluate_cancellable(self, inputs: NNInputs, cancel: Cancel) -> NNOutputs:
        assert isinstance(cancel, _RunCancel)
        return self._run(inputs, cancel)

    def _run(self, inputs: NNInputs, cancel: _RunCancel | None) -> NNOutputs:
        expected = (22, self._height, self._width)
        if tuple(inputs.spatial.shape[1:]) != expected:
            raise InferenceError(
                f"spatial: got shape {list(inputs.spatial.shape)}, "
                f"expected [N, 22, {self._height}, {self._width}] "
                f"(this ONNX model was built for a {self._width}x{self._height} buffer)"
            )
        feed = {
            "spatial": np.ascontiguousarray(inputs.spatial, dtype=np.float32),
            "global": np.ascontiguousarray(inputs.global_, dtype=np.float32),
        }
        try:
            if cancel is None:
                result = self._session.run(list(OUTPUTS), feed)
            else:
                result = self._session.run(list(OUTPUTS), feed, cancel.run_options)
        except Exception as exc:  # onnxruntime's exception classes are not importable portably
            if cancel is not None and cancel.cancelled:
                raise EvaluationCancelled("evaluation cancelled") from exc
            raise InferenceError(f"onnxruntime evaluation of {self.path.name} failed: {exc}") from exc
        arrays = [np.asarray(r, dtype=np.float32) for r in result]
        return NNOutputs(*arrays)

    def close(self) -> None:
        self._session = None
