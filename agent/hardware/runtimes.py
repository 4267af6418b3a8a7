"""Which inference runtimes are actually usable in this Python environment.

A runtime counts as usable only when it imports (a wheel that is installed but fails to load its
shared libraries, e.g. TensorRT without the JetPack system libraries, is reported as missing with
the import error). Each missing runtime names how to get it, following the pip extras in
``pyproject.toml``:

===========  ===================================  =============================================
runtime      module                                how to install
===========  ===================================  =============================================
numpy        numpy (our reference forward pass)    always present
onnx         ``onnxruntime`` (+ providers)         ``pip install 'katago-edge[onnx]'``
             (``onnxruntime-gpu`` for CUDA/TensorRT providers)
tflite       ``ai_edge_litert`` or ``tflite_runtime``  ``pip install 'katago-edge[tflite]'``
tensorrt     ``tensorrt``                          JetPack system package (venv with
                                                   ``--system-site-packages``) or NVIDIA wheels
katago       a ``katago`` binary                   on PATH, configured, or in the katrain wheel
===========  ===================================  =============================================

This probe looks at the running interpreter, not at a probe ``root``: a fixture tree cannot say
which wheels are importable here, so ``katago-edge detect --root`` reports this machine's runtimes.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

INSTALL_HINTS: dict[str, str] = {
    "onnx": "pip install 'katago-edge[onnx]' (onnxruntime-gpu for CUDA)",
    "tflite": "pip install 'katago-edge[tflite]' (ai-edge-litert)",
    "tensorrt": "JetPack's python3-libnvinfer in a venv with --system-site-packages, or pip install tensorrt",
    "katago": "put a katago binary on PATH or set its path in the agent config",
}


@dataclass(frozen=True)
class RuntimeStatus:
    name: str
    available: bool
    version: str | None = None
    providers: tuple[str, ...] = ()  # onnxruntime execution providers
    path: str | None = None  # katago binary
    problem: str | None = None  # why it is not usable, with how to install it


@dataclass(frozen=True)
class Runtimes:
    items: tuple[RuntimeStatus, ...] = field(default_factory=tuple)

    def get(self, name: str) -> RuntimeStatus | None:
        return next((r for r in self.items if r.name == name), None)

    def available(self, name: str, provider: str | None = None) -> bool:
        status = self.get(name)
        if status is None or not status.available:
            return False
        return provider is None or provider in status.providers

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.items if r.available]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _missing(name: str, why: str) -> RuntimeStatus:
    return RuntimeStatus(name=name, available=False, problem=f"{why}; {INSTALL_HINTS[name]}")


def probe_onnxruntime() -> RuntimeStatus:
    if importlib.util.find_spec("onnxruntime") is None:
        return _missing("onnx", "onnxruntime not installed")
    try:
        ort = importlib.import_module("onnxruntime")
        providers = tuple(ort.get_available_providers())
    except Exception as exc:  # broken wheel / missing shared library: report, do not crash
        return _missing("onnx", f"onnxruntime fails to import ({exc})")
    return RuntimeStatus("onnx", True, version=getattr(ort, "__version__", None), providers=providers)


def probe_litert() -> RuntimeStatus:
    for module, dist in (
        ("ai_edge_litert.interpreter", "ai-edge-litert"),
        ("tflite_runtime.interpreter", "tflite-runtime"),
    ):
        try:
            if importlib.util.find_spec(module.split(".")[0]) is None:
                continue
            importlib.import_module(module)
        except Exception as exc:
            logger.debug("%s does not import: %s", module, exc)
            continue
        return RuntimeStatus("tflite", True, version=_version(dist), providers=(module.split(".")[0],))
    return _missing("tflite", "neither ai_edge_litert nor tflite_runtime imports")


def probe_tensorrt() -> RuntimeStatus:
    if importlib.util.find_spec("tensorrt") is None:
        return _missing("tensorrt", "tensorrt not installed")
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:
        return _missing("tensorrt", f"tensorrt fails to import ({exc})")
    return RuntimeStatus("tensorrt", True, version=getattr(trt, "__version__", None))


def _katrain_katago() -> str | None:
    """The KataGo binary shipped inside the katrain wheel (``katrain/KataGo/katago``), if any."""
    spec = importlib.util.find_spec("katrain")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        for cand in sorted(Path(location, "KataGo").glob("katago*")):
            if cand.is_file() and os.access(cand, os.X_OK) and cand.suffix not in (".exe", ".dll"):
                return str(cand)
    return None


def probe_katago(configured: str | None = None) -> RuntimeStatus:
    candidates = [configured] if configured else []
    which = shutil.which("katago")
    if which:
        candidates.append(which)
    for cand in candidates:
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return RuntimeStatus("katago", True, path=str(Path(cand).resolve()))
    bundled = _katrain_katago()
    if bundled:
        return RuntimeStatus("katago", True, path=bundled)
    where = f"{configured} is not an executable file" if configured else "no katago binary found"
    return _missing("katago", where)


def probe_runtimes(katago_path: str | None = None) -> Runtimes:
    """Every runtime this interpreter can use (imports the optional ones; about a second)."""
    return Runtimes(
        (
            RuntimeStatus("numpy", True, version=_version("numpy")),
            probe_onnxruntime(),
            probe_litert(),
            probe_tensorrt(),
            probe_katago(katago_path),
        )
    )
