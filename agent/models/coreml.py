"""Convert → check → write for Core ML (``convert --to coreml``, ``verify X.mlpackage``).

An ``.mlpackage`` is a directory: it is saved into a temp folder beside the target, checked
there, then renamed into place (:func:`agent.backends.coreml.builder.save_package`), the manifest
last. Its ``sha256`` is the hash of the package tree (:func:`tree_sha256`).

Verification, by platform:

* everywhere: the **structural check** (:mod:`agent.backends.coreml.structure`): the saved MIL
  program compared op by op, weight by weight with the FP32 ONNX graph built from the same
  network; a mismatch refuses the conversion like a failed verification;
* on macOS, where Core ML can run it: also the **numerical** verification every other format
  gets (:func:`agent.models.verify.verify` against the FP32 ONNX reference, same positions and
  thresholds), through :class:`agent.backends.coreml.runtime.CoreMLNet`, whose prediction call is
  the one seam (``predict=``) the tests fake on Linux.

On Linux the report says plainly that the numerical check was not run (``numerical: "not run:
..."``) and counts 0 positions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ConversionError
from agent.fsutil import atomic_write_bytes
from agent.models.manifest import Manifest, manifest_path, source_info
from agent.models.verify import VerifyReport

if TYPE_CHECKING:
    from agent.backends.coreml.runtime import Predict
    from agent.backends.coreml.structure import StructureReport
    from agent.models.pipeline import ConvertJob
    from agent.network.model import Network
    from agent.progress import ProgressFactory

logger = logging.getLogger(__name__)

NOT_RUN = "not run: Core ML runs models only on macOS/iOS; the structural check was run instead"


@dataclass
class CoreMLReport(VerifyReport):
    """A :class:`VerifyReport` with the structural check (``metrics["structural"]``) and, on
    macOS, the numerical metrics; ``metrics["numerical"]`` says which."""

    def summary(self) -> str:
        structural = self.metrics.get("structural", {})
        numerical = self.metrics.get("numerical", NOT_RUN)
        head = (
            f"structural check: {structural.get('ops_checked', 0)} ops, "
            f"{structural.get('weights_checked', 0)} constants"
            f" ({structural.get('int8_weights', 0)} INT8) compared with the ONNX graph"
        )
        if numerical == "run":
            num = VerifyReport(
                self.positions,
                {k: v for k, v in self.metrics.items() if k not in ("structural", "numerical")},
                self.thresholds,
                [],
                self.precision,
            ).summary()
        else:
            num = f"numerical check {numerical}"
        verdict = "PASSED" if self.passed else "FAILED: " + "; ".join(self.failures[:5])
        return f"{head}\n{num}\n-> {verdict}"

    def next_steps(self) -> list[str]:
        if self.passed:
            return []
        if any(f.startswith("structural") for f in self.failures):
            return [
                "the Core ML program differs from the ONNX graph: a converter bug; rerun with --verbose and report it"
            ]
        return super().next_steps()


def is_coreml_report(data: dict[str, Any]) -> bool:
    return isinstance(data.get("structural"), dict)


def report_from_json(data: dict[str, Any]) -> VerifyReport:
    """The report a manifest stores, as a :class:`CoreMLReport` when it is one."""
    base = VerifyReport.from_json(data)
    if not is_coreml_report(data):
        return base
    return CoreMLReport(base.positions, base.metrics, base.thresholds, base.failures, base.precision)


def tree_sha256(path: Path) -> str:
    """sha256 over a package directory: every file's relative path and content, in sorted order
    (a plain file: its own sha256 of the content, as :func:`agent.fsutil.sha256_file`)."""
    digest = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode() + b"\0")
        with item.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def structural_check(package: Path, network: Network, precision: str, board: int) -> StructureReport:
    """The structural check of a saved package against the ONNX graph of ``network``."""
    from agent.backends.coreml.structure import check_structure, load_program
    from agent.backends.onnx.builder import OnnxBuildOptions, build_onnx

    onnx_model = build_onnx(network, OnnxBuildOptions(board_x=board, board_y=board))
    return check_structure(load_program(package), onnx_model, precision)


def check_package(
    package: Path,
    network: Network,
    precision: str,
    *,
    board: int = 19,
    numerical: Callable[[Path], VerifyReport] | None = None,
) -> CoreMLReport:
    """Structural check, plus ``numerical(package)`` where given (macOS: Core ML runs it)."""
    structure = structural_check(package, network, precision, board)
    failures = [f"structural: {m}" for m in structure.mismatches[:20]]
    if numerical is None:
        logger.warning("%s: %s", package.name, NOT_RUN)
        metrics: dict[str, Any] = {"structural": structure.to_json(), "numerical": NOT_RUN}
        return CoreMLReport(0, metrics, {}, failures, precision)
    num = numerical(package)
    metrics = dict(num.metrics) | {"structural": structure.to_json(), "numerical": "run"}
    return CoreMLReport(num.positions, metrics, num.thresholds, failures + num.failures, precision)


def numerical_verifier(
    job: ConvertJob,
    network: Network,
    reference: Any,
    progress: ProgressFactory,
    predict: Predict | None = None,
) -> Callable[[Path], VerifyReport]:
    """The numerical verification of a package against ``reference`` (the FP32 ONNX graph), as
    for every other format; ``predict`` replaces Core ML's prediction (the tested seam)."""

    def run(package: Path) -> VerifyReport:
        from agent.backends.coreml.runtime import CoreMLNet
        from agent.models.pipeline import verification_positions, verify_with_progress

        net = CoreMLNet(package, predict=predict)
        with progress("collecting verification positions", job.verify_positions) as prog:
            positions = verification_positions(
                job.verify_source or job.calibration,
                job.verify_positions,
                reference,
                board=job.board,
                progress=prog,
            )
        return verify_with_progress(
            net,
            reference,
            positions,
            network.postprocess,
            precision=job.precision,
            thresholds=job.thresholds,
            progress=progress,
        )

    return run


def run_coreml_conversion(
    job: ConvertJob,
    progress: ProgressFactory,
    manifest_extra: dict[str, Any] | None = None,
    *,
    predict: Predict | None = None,
) -> tuple[VerifyReport, Path | None]:
    """Build, check and write ``job.output`` (an ``.mlpackage``) with its manifest; returns the
    report and the path written (None when refused). ``predict`` forces the numerical path
    with that prediction call (tests); otherwise it runs only where Core ML can."""
    from agent.backends.coreml.builder import build_coreml, package_size, save_package
    from agent.backends.coreml.runtime import can_predict
    from agent.network.reader import read_network

    timings: dict[str, float] = {}
    started = time.monotonic()
    with progress(f"reading {job.model.name}, building the Core ML {job.precision} program", 0):
        network = read_network(job.model)
        build = build_coreml(network, job.precision, board=job.board)
    timings[f"convert_coreml_{job.precision}_s"] = round(time.monotonic() - started, 3)
    numerical = None
    if predict is not None or can_predict():
        from agent.backends.onnx.builder import OnnxBuildOptions, build_onnx
        from agent.backends.onnx.runtime import OnnxNet

        fp32 = build_onnx(network, OnnxBuildOptions(board_x=job.board, board_y=job.board))
        reference = OnnxNet(fp32.SerializeToString(), intra_op_threads=job.threads or None)
        numerical = numerical_verifier(job, network, reference, progress, predict)
    job.output.parent.mkdir(parents=True, exist_ok=True)
    # ".tmp" in the name: the store's listing skips it while the build runs
    staging = Path(tempfile.mkdtemp(prefix=f".{job.output.name}.tmp.", dir=job.output.parent))
    try:
        staged = save_package(build.model, staging / job.output.name)
        clock = time.monotonic()
        with progress("checking the Core ML program against the ONNX graph", 0):
            report = check_package(staged, network, job.precision, board=job.board, numerical=numerical)
        timings["verify_s"] = round(time.monotonic() - clock, 3)
        if not report.passed and not job.force:
            return report, None
        verification = report.to_json()
        if not report.passed:
            verification["forced"] = True
        structure = report.metrics["structural"]
        manifest = Manifest(
            format="coreml",
            precision=job.precision,
            file=job.output.name,
            sha256="",
            source=source_info(job.model, network.name, network.version),
            verification=verification,
            extra={
                "postprocess": network.postprocess.to_dict(),
                "board": job.board,
                "size_bytes": package_size(staged),
                "op_counts": structure["op_counts"],
                "coreml": {
                    "deployment_target": "iOS16/macOS13",
                    "compute_precision": "fp32" if job.precision == "fp32" else "fp16",
                    "fp32_ops": len(build.fp32_ops),
                    "int8_weights": build.quantized,
                    "inputs": {"spatial": "NCHW", "global": "NC"},
                },
                "timings": timings,
                **(manifest_extra or {}),
            },
        )
        with progress(f"writing {job.output.name}", 0):
            _move_package(staged, job.output)
            manifest.sha256 = tree_sha256(job.output)
            atomic_write_bytes(
                manifest_path(job.output), (json.dumps(manifest.to_json(), indent=2) + "\n").encode()
            )
    except OSError as exc:
        raise ConversionError(f"cannot write {job.output}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %s (%d bytes) and its manifest", job.output, manifest.extra["size_bytes"])
    return report, job.output


def _move_package(staged: Path, target: Path) -> None:
    """Rename the checked package into place (the former one removed only after)."""
    old = None
    if target.exists():
        old = staged.with_name(staged.name + ".previous")
        target.rename(old)
    staged.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
