"""TensorRT engines built on the device from our ONNX model (TensorRT 10 API).

TensorRT comes from JetPack (or NVIDIA's wheels on a workstation) and is imported only here and in
``agent.backends.tensorrt.runtime``; on a machine without it ``RuntimeUnavailable`` says what to
install. An engine is specific to the GPU, its compute capability, the TensorRT version, the
network and the precision, so it is cached under a key made of all five and rebuilt when any of
them changes (a JetPack upgrade, a new network, another precision)::

    <cache_dir>/<network-stem>.<precision>.<key16>.engine   + .json manifest beside it

Precision:

* ``fp32``: plain build;
* ``fp16``: ``BuilderFlag.FP16``; TensorRT keeps layers in FP32 where FP16 is unsupported;
* ``int8``: *explicit* quantization: build from the QDQ ONNX model (``agent.backends.onnx.quantize``)
  with ``BuilderFlag.INT8`` (and FP16 for the layers left in float). TensorRT 10 deprecated
  implicit calibration, so no calibrator is used here.

The optimization profile covers batch sizes 1..``max_batch`` with ``opt_batch`` as the tuned shape.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from agent.errors import ConversionError, RuntimeUnavailable
from agent.fsutil import atomic_write_bytes, sha256_file

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
INPUT_NAMES = ("spatial", "global")


def import_tensorrt() -> ModuleType:
    """Import TensorRT or raise an error saying where it comes from."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeUnavailable(
            "TensorRT is not installed: on a Jetson it comes with JetPack (create the venv with "
            "--system-site-packages, as install.sh does); on a workstation `pip install tensorrt pycuda`"
        ) from exc
    if not hasattr(trt, "Builder"):  # e.g. a folder named tensorrt on sys.path, not the library
        raise RuntimeUnavailable(
            f"the module named tensorrt at {getattr(trt, '__file__', None) or list(getattr(trt, '__path__', []))} "
            "is not NVIDIA's TensorRT (no Builder): install TensorRT"
        )
    return trt


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine file depends on. Its digest names the cache file."""

    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    network_sha256: str
    precision: str
    max_batch: int
    board: int = 19

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class BuildSettings:
    precision: str = "fp16"
    max_batch: int = 16
    opt_batch: int = 8
    workspace_mb: int = 1024
    board: int = 19

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConversionError(
                f"TensorRT precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}"
            )
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ConversionError(
                f"opt_batch {self.opt_batch} must be within 1..max_batch ({self.max_batch})"
            )


def gpu_identity() -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of device 0, through pycuda."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise RuntimeUnavailable(
            "pycuda is not installed: `pip install pycuda` (JetPack ships CUDA)"
        ) from exc
    cuda.init()
    dev = cuda.Device(0)
    major, minor = dev.compute_capability()
    return str(dev.name()), f"{major}.{minor}"


def engine_path(cache_dir: Path, onnx_path: Path, key: EngineKey) -> Path:
    stem = onnx_path.name.removesuffix(".onnx")
    return cache_dir / f"{stem}.{key.precision}.{key.digest()}.engine"


def build_engine_bytes(trt: Any, onnx_bytes: bytes, settings: BuildSettings) -> bytes:
    """Parse the ONNX model and build a serialized engine with TensorRT's builder."""
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConversionError(f"TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    if settings.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if settings.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    b = settings.board
    shapes = {"spatial": (22, b, b), "global": (19,)}
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in shapes:
            raise ConversionError(f"unexpected ONNX input {name!r}; expected {', '.join(INPUT_NAMES)}")
        tail = shapes[name]
        profile.set_shape(name, (1, *tail), (settings.opt_batch, *tail), (settings.max_batch, *tail))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConversionError("TensorRT failed to build the engine (see the TensorRT messages in the log)")
    return bytes(serialized)


def ensure_engine(
    onnx_path: Path,
    cache_dir: Path,
    settings: BuildSettings,
    *,
    trt: Any | None = None,
    identity: tuple[str, str] | None = None,
) -> Path:
    """Return a cached engine for ``onnx_path``, building it when the key changed or none exists.

    ``trt`` and ``identity`` are injectable so the cache logic is testable without a GPU.
    """
    trt = trt if trt is not None else import_tensorrt()
    gpu_name, capability = identity if identity is not None else gpu_identity()
    key = EngineKey(
        gpu_name=gpu_name,
        compute_capability=capability,
        tensorrt_version=str(trt.__version__),
        network_sha256=sha256_file(onnx_path),
        precision=settings.precision,
        max_batch=settings.max_batch,
        board=settings.board,
    )
    path = engine_path(cache_dir, onnx_path, key)
    if path.is_file():
        logger.info("TensorRT engine cache hit: %s", path)
        return path
    stale = sorted(cache_dir.glob(f"{onnx_path.name.removesuffix('.onnx')}.{settings.precision}.*.engine"))
    for old in stale:
        logger.info("TensorRT engine %s is for another GPU/TensorRT/network; rebuilding", old.name)
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    logger.info(
        "building TensorRT %s engine for %s on %s (%s); this takes minutes",
        settings.precision,
        onnx_path.name,
        gpu_name,
        capability,
    )
    data = build_engine_bytes(trt, onnx_path.read_bytes(), settings)
    atomic_write_bytes(path, data)
    atomic_write_bytes(
        path.with_suffix(".json"),
        json.dumps({"key": asdict(key), "settings": asdict(settings)}, indent=2).encode(),
    )
    return path
