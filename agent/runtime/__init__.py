"""Network runtimes behind one interface (:class:`agent.runtime.base.NeuralNet`).

The registry maps a runtime name to ``"module:Class"`` and the pip extra that provides its
dependencies. Nothing is imported until a runtime is chosen, so a Pi running ONNX Runtime never
imports TensorRT (and ``katago-edge detect`` imports none of them)::

    from agent.runtime import load_net
    net = load_net("b10c384h6nbttflrs.bin.gz")                 # numpy reference
    net = load_net("model.onnx", runtime="onnx", threads=2)    # options go to the runtime class

A runtime whose dependencies are missing raises :class:`~agent.errors.RuntimeUnavailable` naming
the extra to install (``pip install 'katago-edge[onnx]'``).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from agent.errors import RuntimeUnavailable

if TYPE_CHECKING:
    from agent.network.model import Network
    from agent.runtime.base import NeuralNet

logger = logging.getLogger(__name__)


class RuntimeSpec(NamedTuple):
    target: str  # "module:Class"
    extra: str | None  # pip extra that installs its dependencies; None = always available


RUNTIMES: dict[str, RuntimeSpec] = {
    "numpy": RuntimeSpec("agent.runtime.numpy_runtime:NumpyNet", None),
    "onnx": RuntimeSpec("agent.runtime.onnx_runtime:OnnxNet", "onnx"),
    "tflite": RuntimeSpec("agent.runtime.tflite_runtime:TFLiteNet", "tflite"),
    "tensorrt": RuntimeSpec("agent.runtime.tensorrt_runtime:TensorRTNet", None),
}


def runtime_class(runtime: str) -> type[NeuralNet]:
    """Import and return the class implementing ``runtime``; RuntimeUnavailable if it cannot."""
    spec = RUNTIMES.get(runtime)
    if spec is None:
        raise RuntimeUnavailable(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    module_name, class_name = spec.target.split(":")
    hint = f"; install it with: pip install 'katago-edge[{spec.extra}]'" if spec.extra else ""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeUnavailable(f"runtime {runtime!r} is not available ({exc}){hint}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise RuntimeUnavailable(f"runtime {runtime!r}: {module_name} has no {class_name}")
    return cls


def load_net(path_or_model: str | Path | Network, runtime: str = "numpy", **opts: Any) -> NeuralNet:
    """Load a network with the named runtime; ``opts`` are passed to the runtime's constructor."""
    cls = runtime_class(runtime)
    logger.debug("loading %s with runtime %s", getattr(path_or_model, "name", path_or_model), runtime)
    if isinstance(path_or_model, str):
        path_or_model = Path(path_or_model)
    factory: Any = cls
    net: NeuralNet = factory(path_or_model, **opts)
    return net
