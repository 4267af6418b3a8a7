"""The model store: the one place that turns a network into the file a runtime loads.

``serve``, ``analysis``, ``bench``, ``convert`` and ``verify`` all come here. A *recipe* (runtime,
precision, provider, board, calibration settings, verify thresholds) applied to a *source* (a
KataGo ``.bin.gz``) gives an *artifact*::

    source .bin.gz --build--> (calibrate) --verify against FP32--> <store>/<runtime>/<file> + manifest

Artifacts are cached under a key of everything that decides their content: the source's sha256,
the recipe, and the versions of the tools that build them (katago-edge, onnx, onnxruntime,
LiteRT, TensorFlow, TensorRT). A new network, a new recipe or an upgraded tool never reuses an old
file; the same ones never build twice. Files and manifests are written atomically, the manifest
last (a file without one is an interrupted build and is rebuilt). One build runs at a time per
store, across processes too (an ``flock`` on ``<root>/.build.lock``; a Pi has memory for one
conversion): a second ``convert`` or daemon waits, says so in its log, then uses what the first built.

A conversion that verification refuses leaves no artifact but a *refusal* beside where it would
have been (``<file>.refused.json``, the report and the reason): the next start falls back at once
with that reason instead of spending minutes converting again. ``katago-edge models prune
--refused`` forgets refusals.

Converted files given directly (``.onnx``, ``.tflite``, ``.engine``/``.plan``) are opened by the
runtime their suffix names (:func:`agent.models.pipeline.open_converted`); their post-processing parameters come from the
file's own metadata (ONNX) or the manifest beside it.

Layout (``root`` is ``<cache_dir>/models`` for the daemon)::

    <root>/onnx/g170-b6c96-int8-3f9c0a1b2c4d.onnx
    <root>/onnx/g170-b6c96-int8-3f9c0a1b2c4d.onnx.manifest.json
    <root>/tflite/b10c384h6nbttflrs-fp16-77a1e0c9d2f3.tflite.refused.json
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from agent.backends.base import NeuralNet
from agent.backends.registry import ARTIFACT_SUFFIX, RUNTIME_NAMES
from agent.errors import ConversionError, ModelStoreError, RuntimeUnavailable, VerificationFailed
from agent.fsutil import atomic_write_text, default_cache_dir, file_lock, sha256_file
from agent.models.manifest import MANIFEST_SUFFIX, Manifest, manifest_path, read_manifest, tool_versions
from agent.models.pipeline import ConvertJob, open_converted, run_conversion
from agent.models.verify import MIN_POSITIONS, Threshold, VerifyReport, thresholds_for
from agent.network.model import PostProcessParams
from agent.progress import NO_PROGRESS, ProgressFactory
from agent.records import field_dict

logger = logging.getLogger(__name__)

#: How ONNX INT8 graphs are built, part of their key: a store built before a change rebuilds its
#: INT8 artifacts instead of serving the old graph (2026-12-07: conv nets quantized from the im2col
#: graph, int8 GEMMs; docs/conversion.md). ``im2col-2``: transformer nets get the sensitivity pass
#: too (units per block and kind, starting from the fixed float list). ``im2col-3``: a graph
#: verification refuses is escalated (more units float, verified on fresh positions), so a
#: refusal cached under ``im2col-2`` is not served; graphs passing at once are unchanged.
ONNX_INT8_GRAPH = "im2col-3"

REFUSED_SUFFIX = ".refused.json"
#: held (``flock``) while building: one conversion at a time per store, across processes
BUILD_LOCK = ".build.lock"
PRECISIONS: dict[str, tuple[str, ...]] = {
    "numpy": ("fp32",),
    "onnx": ("fp32", "fp16", "int8"),
    "tflite": ("fp32", "fp16", "int8", "int8-full"),
    "tensorrt": ("fp32", "fp16", "int8"),
    "coreml": ("fp32", "fp16", "int8"),  # an .mlpackage directory (agent.models.coreml)
}


class VerificationRefused(VerificationFailed):
    """A conversion verification refused (now, or on an earlier run: a cached refusal)."""

    def __init__(self, message: str, report: VerifyReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Recipe:
    """How to make an artifact: everything besides the source that decides its content."""

    runtime: str
    precision: str = "fp32"
    provider: str | None = None  # an onnxruntime execution provider (kept with the artifact)
    board: int = 19
    calibration: Path | None = None  # SGF file/folder for INT8 calibration; None = FP32 self-play
    calibration_positions: int = 256
    calibration_method: str = "percentile"
    int8_mode: str = "static"
    weight_rounding: str = "gptq"
    keep_float: tuple[str, ...] | None = None
    verify_source: Path | None = None  # SGF positions for verification; None = self-play
    verify_positions: int = MIN_POSITIONS
    thresholds: tuple[tuple[str, str, float], ...] = ()  # overrides: (metric, op, value)
    smooth_alpha: float = 0.0
    tflite_builder: str = "writer"  # TFLite: "writer" (direct flatbuffer) or "tensorflow"

    def __post_init__(self) -> None:
        if self.runtime not in PRECISIONS:
            raise RuntimeUnavailable(f"unknown runtime {self.runtime!r}; known: {', '.join(RUNTIME_NAMES)}")
        if self.precision not in PRECISIONS[self.runtime]:
            raise ConversionError(
                f"precision {self.precision!r} is not supported by {self.runtime} "
                f"(supported: {', '.join(PRECISIONS[self.runtime])})"
            )

    @property
    def label(self) -> str:
        via = f" via {self.provider}" if self.provider else ""
        return f"{self.runtime}/{self.precision}{via}"

    def threshold_map(self) -> dict[str, Threshold]:
        return {metric: (op, value) for metric, op, value in self.thresholds}

    def job(self, source: Path, output: Path, *, threads: int, force: bool) -> ConvertJob:
        """The conversion of ``source`` to ``output`` this recipe asks for (the settings both name
        alike pass through as they are)."""
        alike = ({f.name for f in fields(ConvertJob)} & {f.name for f in fields(self)}) - {"thresholds"}
        return ConvertJob(
            model=source,
            target=self.runtime,
            output=output,
            thresholds=self.threshold_map(),
            threads=threads,
            force=force,
            **{name: getattr(self, name) for name in alike},
        )

    def describe(self) -> dict[str, Any]:
        """The recipe as JSON: what the key covers, with the verify thresholds in force."""
        out = asdict(self)
        out["calibration"] = str(self.calibration) if self.calibration else None
        out["verify_source"] = str(self.verify_source) if self.verify_source else None
        out["keep_float"] = list(self.keep_float) if self.keep_float is not None else None
        out["thresholds"] = {
            k: list(v) for k, v in thresholds_for(self.precision.split("-")[0], self.threshold_map()).items()
        }
        if self.runtime == "onnx" and self.precision == "int8":
            out["onnx_int8_graph"] = ONNX_INT8_GRAPH
        return out


@dataclass(frozen=True)
class Artifact:
    """A file a runtime can load, with where it came from and how good it is."""

    path: Path
    runtime: str
    precision: str
    provider: str | None
    sha256: str
    manifest: Manifest | None
    built_now: bool = False

    @property
    def verify(self) -> dict[str, Any]:
        """Verification in short: passed / forced / positions / failures, or why there is none."""
        if self.runtime == "numpy":
            return {"status": "reference", "detail": "the FP32 numpy reference itself"}
        report = self.manifest.verification if self.manifest else None
        if not report:
            return {"status": "unverified", "detail": "no manifest beside the file"}
        status = "forced" if report.get("forced") else ("passed" if report.get("passed") else "failed")
        return {
            "status": status,
            "positions": report.get("positions"),
            "failures": report.get("failures", []),
        }

    def postprocess(self) -> PostProcessParams | None:
        data = self.manifest.extra.get("postprocess") if self.manifest else None
        return PostProcessParams.from_dict(data) if data else None


@dataclass(frozen=True)
class StoreEntry:
    """One file of the store as ``katago-edge models list`` shows it."""

    path: Path
    kind: str  # "artifact" | "refused" | "incomplete"
    runtime: str
    precision: str
    network: str
    size: int
    created: str
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ident(self) -> str:
        return self.path.name.split(".")[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.ident,
            **field_dict(self, skip=("path", "detail")),
            "file": str(self.path),
            **self.detail,
        }


def check_runtime(runtime: str, provider: str | None = None) -> None:
    """Raise RuntimeUnavailable (with the package to install) when ``runtime`` cannot run here.

    Cheap: imports the runtime's package, builds nothing. Run before a conversion, so an entry
    that cannot serve falls back in a second instead of after minutes of converting.
    """
    if runtime == "numpy":
        return
    if runtime == "onnx":
        from agent.backends.onnx.runtime import _import_ort

        ort = _import_ort()
        if provider and provider not in ort.get_available_providers():
            raise RuntimeUnavailable(
                f"onnxruntime {ort.__version__} has no {provider} (has "
                f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu on an NVIDIA machine"
            )
        return
    if runtime == "tflite":
        from agent.backends.tflite.runtime import interpreter_class

        interpreter_class()
        return
    if runtime == "tensorrt":
        from agent.backends.tensorrt.builder import import_tensorrt
        from agent.backends.tensorrt.runtime import _import_pycuda

        import_tensorrt()
        _import_pycuda()
        return
    raise RuntimeUnavailable(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIME_NAMES)}")


def _network_name(source: Path) -> str:
    name = source.name
    for suffix in (".bin.gz", ".txt.gz", ".bin", ".txt"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return source.stem


class ModelStore:
    """Artifacts under ``root``, one folder per runtime (module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()  # one build at a time in a process (conversions take GBs)
        self._hashes: dict[tuple[str, int, int], str] = {}

    # -- keys and paths ---------------------------------------------------------------------------------
    def source_sha256(self, source: Path) -> str:
        """The source's sha256, remembered per (path, size, mtime) within this process."""
        st = source.stat()
        memo = (str(source.resolve()), st.st_size, st.st_mtime_ns)
        if memo not in self._hashes:
            self._hashes[memo] = sha256_file(source)
        return self._hashes[memo]

    def key(self, source_sha256: str, recipe: Recipe) -> str:
        material = {"source": source_sha256, "recipe": recipe.describe(), "tools": tool_versions()}
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:12]

    def artifact_path(self, source: Path, recipe: Recipe) -> Path:
        key = self.key(self.source_sha256(source), recipe)
        precision = recipe.precision + (
            f"-{recipe.provider.removesuffix('ExecutionProvider').lower()}" if recipe.provider else ""
        )
        name = f"{_network_name(source)}-{precision}-{key}{ARTIFACT_SUFFIX[recipe.runtime]}"
        return self.root / recipe.runtime / name

    # -- preparing ----------------------------------------------------------------------------------------
    def cached(self, source: Path, recipe: Recipe) -> Artifact | None:
        """The verified artifact for ``source`` + ``recipe`` if it is in the store, else None."""
        if recipe.runtime == "numpy":
            return self._reference(source)
        path = self.artifact_path(source, recipe)
        manifest = read_manifest(path) if path.exists() else None
        if manifest is None:
            return None
        if manifest.sha256 and manifest.sha256 != _artifact_sha256(path):
            logger.warning("%s does not match its manifest's sha256: rebuilding it", path)
            return None
        return Artifact(path, recipe.runtime, recipe.precision, recipe.provider, manifest.sha256, manifest)

    def refusal(self, source: Path, recipe: Recipe) -> dict[str, Any] | None:
        """The recorded refusal of this conversion (verification failed), if any."""
        path = self.artifact_path(source, recipe)
        refused = path.with_name(path.name + REFUSED_SUFFIX)
        if not refused.is_file():
            return None
        try:
            data: dict[str, Any] = json.loads(refused.read_text())
        except (OSError, ValueError):
            return None
        return data

    def prepare(
        self,
        source: Path,
        recipe: Recipe,
        *,
        progress: ProgressFactory = NO_PROGRESS,
        threads: int = 0,
        force: bool = False,
        retry_refused: bool = False,
    ) -> Artifact:
        """The artifact for ``source`` + ``recipe``: from the store, or built, verified and stored.

        Raises ``VerificationFailed`` when verification refuses it (now or on an earlier start,
        unless ``retry_refused``); ``force`` stores a refused conversion anyway, marked forced.
        """
        if recipe.runtime == "numpy":
            return self._reference(source)
        found = self.cached(source, recipe)
        if found is not None:
            if found.verify["status"] == "failed":
                raise VerificationFailed(f"{found.path}: stored artifact failed verification")
            logger.info("model store: using %s (%s)", found.path.name, recipe.label)
            return found
        refused = None if (force or retry_refused) else self.refusal(source, recipe)
        if refused is not None:
            raise VerificationRefused(
                f"{recipe.label} refused by verification on {refused.get('created', 'an earlier start')}: "
                f"{refused.get('reason', '?')} (cached refusal; `katago-edge models prune --refused` retries)",
                VerifyReport.from_json(refused.get("verification", {})),
            )
        lock = self.root / BUILD_LOCK

        def waiting() -> None:
            logger.info("model store: waiting for another process's build in %s (%s)", self.root, lock.name)

        with self._lock, file_lock(lock, waiting):
            found = self.cached(source, recipe)  # another thread or process may have built it meanwhile
            if found is not None:
                return found
            return self._build(source, recipe, progress=progress, threads=threads, force=force)

    def _build(
        self, source: Path, recipe: Recipe, *, progress: ProgressFactory, threads: int, force: bool
    ) -> Artifact:
        target = self.artifact_path(source, recipe)
        target.parent.mkdir(parents=True, exist_ok=True)
        job = recipe.job(source, target, threads=threads, force=force)
        started = time.monotonic()
        extra = {
            "key": target.stem.rsplit("-", 1)[-1],
            "recipe": recipe.describe(),
            "provider": recipe.provider,
        }
        if recipe.runtime == "coreml":  # a package directory, checked structurally off macOS
            from agent.models.coreml import run_coreml_conversion

            report, written = run_coreml_conversion(job, progress, manifest_extra=extra)
        else:
            report, written = run_conversion(job, progress, manifest_extra=extra)
        refused = target.with_name(target.name + REFUSED_SUFFIX)
        if written is None:
            reason = "; ".join(report.failures) or "verification failed"
            atomic_write_text(
                refused,
                json.dumps(
                    {
                        "recipe": recipe.describe(),
                        "source": str(source),
                        "reason": reason,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "verification": report.to_json(),
                    },
                    indent=2,
                )
                + "\n",
            )
            raise VerificationRefused(f"{recipe.label} refused by verification: {reason}", report)
        refused.unlink(missing_ok=True)
        manifest = read_manifest(written)
        logger.info("model store: built %s in %.1f s", written.name, time.monotonic() - started)
        return Artifact(
            written,
            recipe.runtime,
            recipe.precision,
            recipe.provider,
            manifest.sha256 if manifest else _artifact_sha256(written),
            manifest,
            built_now=True,
        )

    def _reference(self, source: Path) -> Artifact:
        return Artifact(source, "numpy", "fp32", None, self.source_sha256(source), None)

    def open(self, artifact: Artifact, *, threads: int = 0) -> NeuralNet:
        """Load ``artifact`` with its runtime (and provider)."""
        return open_converted(
            artifact.path,
            runtime=artifact.runtime,
            threads=threads,
            provider=artifact.provider,
            manifest=artifact.manifest,
        )

    # -- seeing and cleaning ------------------------------------------------------------------------------
    def entries(self) -> list[StoreEntry]:
        out: list[StoreEntry] = []
        if not self.root.is_dir():
            return out
        for runtime in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for path in sorted(runtime.iterdir()):
                if path.name.endswith(MANIFEST_SUFFIX) or ".tmp" in path.name:
                    continue
                out.append(self._entry(runtime.name, path))
        return out

    def _entry(self, runtime: str, path: Path) -> StoreEntry:
        stat = path.stat()
        size = _artifact_size(path)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stat.st_mtime))
        if path.name.endswith(REFUSED_SUFFIX):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                data = {}
            recipe = data.get("recipe", {})
            return StoreEntry(
                path,
                "refused",
                runtime,
                str(recipe.get("precision", "?")),
                Path(str(data.get("source", "?"))).name,
                stat.st_size,
                str(data.get("created", created)),
                {"reason": data.get("reason")},
            )
        try:
            manifest = read_manifest(path)
        except ConversionError:
            manifest = None
        if manifest is None:
            return StoreEntry(path, "incomplete", runtime, "?", "?", size, created)
        artifact = Artifact(
            path, runtime, manifest.precision, manifest.extra.get("provider"), manifest.sha256, manifest
        )
        return StoreEntry(
            path,
            "artifact",
            runtime,
            manifest.precision,
            str(manifest.source.get("name", "?")),
            size,
            manifest.created,
            {"verify": artifact.verify, "sha256": manifest.sha256},
        )

    def find(self, ident: str) -> StoreEntry:
        matches = [
            e for e in self.entries() if e.ident == ident or e.path.name == ident or str(e.path) == ident
        ]
        if not matches:
            matches = [e for e in self.entries() if e.ident.startswith(ident)]
        if len(matches) != 1:
            known = ", ".join(e.ident for e in self.entries()) or "none"
            raise ModelStoreError(
                f"{'no' if not matches else 'more than one'} store entry matches {ident!r} (entries: {known})"
            )
        return matches[0]

    def remove(self, entry: StoreEntry) -> list[Path]:
        removed = [entry.path]
        if entry.path.is_dir():  # a Core ML package
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            entry.path.unlink(missing_ok=True)
        if entry.kind == "artifact":
            mpath = manifest_path(entry.path)
            mpath.unlink(missing_ok=True)
            removed.append(mpath)
        return removed

    def prune(
        self, *, everything: bool = False, refused: bool = False, older_than_days: float | None = None
    ) -> list[Path]:
        """Remove artifacts (all, or older than N days), refusals, and interrupted builds."""
        now = time.time()
        removed: list[Path] = []
        for entry in self.entries():
            old = older_than_days is not None and now - entry.path.stat().st_mtime > older_than_days * 86400
            if (
                everything
                or entry.kind == "incomplete"
                or (refused and entry.kind == "refused")
                or (old and entry.kind == "artifact")
            ):
                removed.extend(self.remove(entry))
        return removed

    def size(self) -> int:
        return sum(e.size for e in self.entries())


def default_store_root() -> Path:
    """Where ``katago-edge`` keeps artifacts when no agent config says otherwise:
    ``$KATAGO_EDGE_ARTIFACT_STORE``, else ``<cache dir>/models`` (``$KATAGO_EDGE_CACHE``, systemd's
    ``$CACHE_DIRECTORY``, ``$XDG_CACHE_HOME/katago-edge``)."""
    env = os.environ.get("KATAGO_EDGE_ARTIFACT_STORE")
    return Path(env) if env else default_cache_dir() / "models"


def copy_artifact(artifact: Artifact, output: Path) -> Path:
    """Copy an artifact and its manifest to ``output`` (atomically, the manifest last)."""
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    if artifact.path.is_dir():  # a Core ML package: copied whole, then renamed over the old one
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(artifact.path, tmp)
        old = output.with_name(f".{output.name}.{os.getpid()}.old")
        if output.exists():
            output.rename(old)
        tmp.rename(output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        shutil.copyfile(artifact.path, tmp)
        tmp.replace(output)
    if artifact.manifest is not None:
        data = artifact.manifest.to_json()
        data["file"] = output.name
        atomic_write_text(manifest_path(output), json.dumps(data, indent=2) + "\n")
    return output


def _artifact_size(path: Path) -> int:
    """Bytes of a file, or of every file in a package directory."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _artifact_sha256(path: Path) -> str:
    """A file's sha256, or a package directory's (Core ML ``.mlpackage``: its tree's)."""
    if path.is_dir():
        from agent.models.coreml import tree_sha256

        return tree_sha256(path)
    return sha256_file(path)
