"""The JSON manifest written beside every converted network (``<file>.manifest.json``).

It records where the file came from and how good it is, so a device never installs a network
whose accuracy nobody measured::

    {
      "format": "onnx", "precision": "int8", "file": "b6c96.int8.onnx", "sha256": "...",
      "source": {"path": "...", "name": "g170-b6c96", "model_version": 8, "sha256": "..."},
      "calibration": {"source": "sgf:...", "method": "percentile", "positions": 256,
                      "ids": ["g19_01.sgf#57", ...]},
      "tools": {"katago-edge": "0.1.0", "onnx": "1.23.2", "onnxruntime": "1.32.0", ...},
      "verification": {...the verify report...},
      "created": "2026-11-25T21:30:00Z"
    }

Both the network and its manifest are written atomically (temp file in the same folder, fsync,
rename), the manifest last: a network without a manifest is an interrupted conversion.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from agent.errors import ConversionError
from agent.fsutil import atomic_write_bytes, sha256_file
from agent.records import field_dict

logger = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
_TOOLS = (
    "katago-edge",
    "onnx",
    "onnxruntime",
    "numpy",
    "ai-edge-litert",
    "tensorflow-cpu",
    "tensorrt",
    "coremltools",
)


def manifest_path(network_file: Path) -> Path:
    return network_file.with_name(network_file.name + MANIFEST_SUFFIX)


def tool_versions() -> dict[str, str]:
    out = {}
    for name in _TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@dataclass
class Manifest:
    format: str
    precision: str
    file: str
    sha256: str
    source: dict[str, Any]
    calibration: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    tools: dict[str, str] = field(default_factory=tool_versions)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**field_dict(self, skip=("extra",)), **self.extra}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = {"format", "precision", "file", "sha256", "source"} - set(data)
        if missing:
            raise ConversionError(f"manifest lacks {sorted(missing)}")
        return cls(
            **{k: data[k] for k in known if k in data},
            extra={k: v for k, v in data.items() if k not in known},
        )


def source_info(path: Path, name: str, model_version: int) -> dict[str, Any]:
    return {"path": str(path), "name": name, "model_version": model_version, "sha256": sha256_file(path)}


def write_network_and_manifest(target: Path, data: bytes, manifest: Manifest) -> Path:
    """Atomically write the converted network, then its manifest; returns the manifest path."""
    try:
        atomic_write_bytes(target, data)
        manifest.file = target.name
        manifest.sha256 = sha256_file(target)
        mpath = manifest_path(target)
        atomic_write_bytes(mpath, (json.dumps(manifest.to_json(), indent=2) + "\n").encode())
    except OSError as exc:
        raise ConversionError(f"cannot write {target}: {exc}") from exc
    logger.info("wrote %s and %s", target, mpath.name)
    return mpath


def read_manifest(network_file: Path) -> Manifest | None:
    """The manifest beside ``network_file``, or None when there is none."""
    path = manifest_path(network_file)
    if not path.is_file():
        return None
    try:
        return Manifest.from_json(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{path}: unreadable manifest: {exc}") from exc


def add_to_manifest(network_file: Path, key: str, value: Any) -> Path | None:
    """Set ``key`` in the manifest beside ``network_file`` (atomically rewritten); returns its
    path, or None when the file has no manifest."""
    manifest = read_manifest(network_file)
    if manifest is None:
        return None
    manifest.extra[key] = value
    path = manifest_path(network_file)
    try:
        atomic_write_bytes(path, (json.dumps(manifest.to_json(), indent=2) + "\n").encode())
    except OSError as exc:
        raise ConversionError(f"cannot write {path}: {exc}") from exc
    return path
