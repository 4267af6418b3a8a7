"""``NeuralNet`` over a TensorRT engine (TensorRT 10 ``execute_async_v3`` on pycuda buffers).

The engine comes from ``agent.backends.tensorrt.builder.ensure_engine`` (built on the device from
our ONNX model, cached by GPU + TensorRT version + network hash + precision). Input and output
tensors carry the names of the ONNX graph: inputs ``spatial`` and ``global``, outputs ``policy``,
``policy_pass``, ``value``, ``score_value`` and ``ownership`` (the fields of ``NNOutputs``).

Device buffers are allocated once for the engine's maximum batch; a batch larger than that is
split. ``evaluate`` is serialised by a lock: one CUDA stream, one execution context.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from agent.backends.base import NetInfo, NeuralNet, NNInputs, NNOutputs, require_postprocess
from agent.backends.optional import import_optional
from agent.backends.tensorrt.builder import BuildSettings, ensure_engine, import_tensorrt
from agent.errors import InferenceError
from agent.network.model import PostProcessParams

logger = logging.getLogger(__name__)

OUTPUT_NAMES = ("policy", "policy_pass", "value", "score_value", "ownership")


def _import_pycuda() -> Any:
    return import_optional(
        "pycuda.driver", "pycuda is not installed: `pip install pycuda` (CUDA comes with JetPack)"
    )


class TensorRTNet(NeuralNet):
    """Runs a serialized TensorRT engine. Build or fetch the engine with ``from_onnx``."""

    def __init__(
        self,
        engine_file: Path,
        *,
        name: str = "",
        model_version: int = 0,
        precision: str = "fp16",
        postprocess: PostProcessParams | None = None,
    ) -> None:
        self.path = Path(engine_file)
        self._post = postprocess
        trt = import_tensorrt()
        cuda = _import_pycuda()
        cuda.init()
        self._cuda = cuda
        self._ctx = cuda.Device(0).retain_primary_context()
        self._ctx.push()
        try:
            self._trt_logger = trt.Logger(trt.Logger.WARNING)
            runtime = trt.Runtime(self._trt_logger)
            self._engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
            if self._engine is None:
                raise InferenceError(
                    f"{engine_file}: TensorRT could not deserialize the engine (built by another version?)"
                )
            self._context = self._engine.create_execution_context()
            self._stream = cuda.Stream()
            names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
            self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            self._outputs = [n for n in names if n not in self._inputs]
            missing = {"spatial", "global"} - set(self._inputs) | set(OUTPUT_NAMES) - set(self._outputs)
            if missing:
                raise InferenceError(f"{engine_file}: engine lacks tensors {sorted(missing)}; got {names}")
            shape = self._engine.get_tensor_profile_shape("spatial", 0)
            self._max_batch = int(shape[2][0])
            self._board_y, self._board_x = int(shape[2][2]), int(shape[2][3])
            self._host: dict[str, Any] = {}
            self._device: dict[str, Any] = {}
            self._context.set_input_shape("spatial", (self._max_batch, 22, self._board_y, self._board_x))
            self._context.set_input_shape("global", (self._max_batch, 19))
            for n in names:
                full = tuple(self._context.get_tensor_shape(n))
                self._host[n] = cuda.pagelocked_empty(full, dtype=np.float32)
                self._device[n] = cuda.mem_alloc(self._host[n].nbytes)
                self._context.set_tensor_address(n, int(self._device[n]))
        finally:
            self._ctx.pop()
        self._lock = threading.Lock()
        self._info = NetInfo(
            name or engine_file.stem,
            model_version,
            "tensorrt",
            precision,
            self._board_x,
            self._board_y,
            self._max_batch,
        )

    @classmethod
    def from_onnx(
        cls, onnx_path: Path, cache_dir: Path, settings: BuildSettings, **kwargs: Any
    ) -> TensorRTNet:
        engine = ensure_engine(onnx_path, cache_dir, settings)
        return cls(engine, precision=settings.precision, **kwargs)

    @property
    def info(self) -> NetInfo:
        return self._info

    @property
    def postprocess_params(self) -> PostProcessParams:
        return require_postprocess(
            self._post,
            self.path,
            "build it with `katago-edge convert --to tensorrt`, which writes a manifest",
        )

    def evaluate(self, inputs: NNInputs) -> NNOutputs:
        parts = []
        for start in range(0, inputs.batch_size, self._max_batch):
            stop = min(start + self._max_batch, inputs.batch_size)
            parts.append(self._run(inputs.spatial[start:stop], inputs.global_[start:stop]))
        if len(parts) == 1:
            return parts[0]
        return NNOutputs(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("policy", "policy_pass", "value", "score_value", "ownership")
            )
        )

    def _run(self, spatial: np.ndarray, global_: np.ndarray) -> NNOutputs:
        n = spatial.shape[0]
        cuda = self._cuda
        with self._lock:
            self._ctx.push()
            try:
                self._context.set_input_shape("spatial", (n, 22, self._board_y, self._board_x))
                self._context.set_input_shape("global", (n, 19))
                for name, arr in (("spatial", spatial), ("global", global_)):
                    self._host[name][:n] = arr
                    cuda.memcpy_htod_async(self._device[name], self._host[name], self._stream)
                if not self._context.execute_async_v3(self._stream.handle):
                    raise InferenceError("TensorRT execute_async_v3 failed")
                for name in OUTPUT_NAMES:
                    cuda.memcpy_dtoh_async(self._host[name], self._device[name], self._stream)
                self._stream.synchronize()
            except cuda.Error as exc:
                raise InferenceError(f"CUDA error during TensorRT inference: {exc}") from exc
            finally:
                self._ctx.pop()
            out = {name: np.array(self._host[name][:n], dtype=np.float32) for name in OUTPUT_NAMES}
        return NNOutputs(
            out["policy"], out["policy_pass"], out["value"], out["score_value"], out["ownership"]
        )

    def close(self) -> None:
        for buf in self._device.values():
            buf.free()
        self._device.clear()
