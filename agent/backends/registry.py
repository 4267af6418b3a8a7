"""Network runtimes behind one interface (:class:`agent.backends.base.NeuralNet`), by name.

Every runtime module is imported plainly (a missing piece of the project fails at import, in the
tests, not as a silent fallback for a user). Their third-party packages (onnxruntime, LiteRT,
TensorRT, pycuda) are imported only when a network is loaded, so ``katago-edge detect`` on a Pi
never imports onnxruntime::

    from agent.backends.registry import load_net
    net = load_net("b10c384h6nbttflrs.bin.gz")                 # numpy reference
    net = load_net("model.onnx", runtime="onnx", threads=2)    # options go to the runtime class

A runtime whose packages are missing raises :class:`~agent.errors.RuntimeUnavailable` naming
the pip extra to install (``pip install 'katago-edge[onnx]'``).

Runtime names are one vocabulary across profiles, config, CLI and bench: ``numpy``, ``onnx``,
``tflite``, ``tensorrt`` (:data:`RUNTIME_NAMES`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.backends.base import NeuralNet
from agent.backends.numpy.runtime import NumpyNet
from agent.backends.onnx.runtime import OnnxNet
from agent.backends.tensorrt.runtime import TensorRTNet
from agent.backends.tflite.runtime import TFLiteNet
from agent.errors import RuntimeUnavailable

if TYPE_CHECKING:
    from agent.network.model import Network

logger = logging.getLogger(__name__)

RUNTIMES: dict[str, type[NeuralNet]] = {
    "numpy": NumpyNet,
    "onnx": OnnxNet,
    "tflite": TFLiteNet,
    "tensorrt": TensorRTNet,
}
RUNTIME_NAMES: tuple[str, ...] = tuple(RUNTIMES)

# The file suffix of each runtime's artifact, and the runtime a converted file's suffix names.
ARTIFACT_SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "tensorrt": ".engine", "coreml": ".mlpackage"}
SUFFIX_RUNTIME = {".onnx": "onnx", ".tflite": "tflite", ".engine": "tensorrt", ".plan": "tensorrt"}
KATAGO_SUFFIXES = (".bin.gz", ".txt.gz", ".bin", ".txt")


def runtime_class(runtime: str) -> type[NeuralNet]:
    """The class implementing ``runtime``; RuntimeUnavailable for an unknown name."""
    cls = RUNTIMES.get(runtime)
    if cls is None:
        raise RuntimeUnavailable(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    return cls


def runtime_for_file(path: str | Path) -> str | None:
    """The runtime a converted network file is for (by suffix), or None for a KataGo network."""
    name = str(path).lower()
    if name.endswith(KATAGO_SUFFIXES):
        return None
    return SUFFIX_RUNTIME.get(Path(name).suffix)


def load_net(path_or_model: str | Path | Network, runtime: str = "numpy", **opts: Any) -> NeuralNet:
    """Load a network with the named runtime; ``opts`` are passed to the runtime's constructor."""
    cls = runtime_class(runtime)
    logger.debug("loading %s with runtime %s", getattr(path_or_model, "name", path_or_model), runtime)
    if isinstance(path_or_model, str):
        path_or_model = Path(path_or_model)
    factory: Any = cls
    net: NeuralNet = factory(path_or_model, **opts)
    return net
