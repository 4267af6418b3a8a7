"""The convert → verify → write pipeline behind ``katago-edge convert`` (no argparse here).

Order matters for the "no partial output" rule: the converted network is produced in memory (or
in a temp file), verified, and only then written atomically with its manifest. Any error or a
failed verification (without ``force``) leaves nothing at the output path.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.backends.base import NeuralNet
from agent.backends.numpy.runtime import NumpyNet
from agent.backends.onnx.runtime import OnnxNet
from agent.backends.registry import load_net, runtime_for_file
from agent.backends.tensorrt.runtime import TensorRTNet
from agent.backends.tflite.runtime import TFLiteNet
from agent.errors import ConversionError, ModelStoreError, RuntimeUnavailable
from agent.models.manifest import Manifest, read_manifest, source_info, write_network_and_manifest
from agent.models.positions import PositionSet, positions_from_selfplay, positions_from_sgf
from agent.models.verify import Threshold, VerifyReport, attempt_record, verify
from agent.network.model import PostProcessParams
from agent.progress import ProgressFactory, StepFn

logger = logging.getLogger(__name__)

CALIBRATION_SEED = 7
FP32_GRAPH_POSITIONS = 16
VERIFY_SEED = 1001
#: escalation ``k`` of an INT8 graph verification refused is verified on positions of the seed
#: ``VERIFY_SEED + k * ESCALATION_SEED_STEP`` (fresh self-play games; from SGF records, the
#: positions of every earlier sample are excluded)
ESCALATION_SEED_STEP = 100


@dataclass
class ConvertJob:
    model: Path
    target: str
    precision: str
    output: Path
    calibration: Path | None = None
    calibration_method: str = "percentile"
    calibration_positions: int = 256
    int8_mode: str = "static"
    verify_source: Path | None = None
    verify_positions: int = 200
    thresholds: dict[str, Threshold] = field(default_factory=dict)
    threads: int = 0
    board: int = 19
    force: bool = False
    keep_float: tuple[str, ...] | None = None  # INT8 layer groups left in float (None: the default list)
    smooth_alpha: float = 0.0  # > 0: SmoothQuant rescaling before static INT8 (agent.backends.onnx.smoothing)
    weight_rounding: str = "gptq"  # static INT8 weight rounding (agent.backends.onnx.weight_rounding)
    tflite_builder: str = "writer"  # "writer" (direct flatbuffer, no TensorFlow) or "tensorflow"


def verification_positions(
    source: Path | None,
    count: int,
    reference: NeuralNet,
    *,
    exclude: Any = (),
    board: int = 19,
    progress: StepFn | None = None,
    seed: int = VERIFY_SEED,
) -> PositionSet:
    """SGF positions (minus ``exclude``) when a source is given, else FP32 self-play."""
    if source is not None:
        return positions_from_sgf(
            source, count, nn_x=board, nn_y=board, seed=seed, exclude=exclude, progress=progress
        )
    return positions_from_selfplay(reference, count, seed=seed, progress=progress)


def _calibration(job: ConvertJob, reference: NeuralNet, progress: ProgressFactory) -> PositionSet:
    with progress("collecting calibration positions", job.calibration_positions) as prog:
        if job.calibration is not None:
            return positions_from_sgf(
                job.calibration,
                job.calibration_positions,
                nn_x=job.board,
                nn_y=job.board,
                seed=CALIBRATION_SEED,
                progress=prog,
            )
        return positions_from_selfplay(
            reference, job.calibration_positions, seed=CALIBRATION_SEED, progress=prog
        )


def _onnx_bytes(
    job: ConvertJob, fp32: Any, reference: NeuralNet, progress: ProgressFactory
) -> tuple[bytes, PositionSet | None, Any]:
    """The converted graph, its calibration positions, and the sensitivity pass's
    :class:`~agent.models.sensitivity.Int8Pass` when it ran (None otherwise)."""
    from agent.backends.onnx import quantize
    from agent.backends.onnx.builder import OnnxBuildOptions, build_onnx
    from agent.network.reader import read_network

    if job.precision == "fp32":
        return fp32.SerializeToString(), None, None
    if job.precision == "fp16":
        return quantize.to_fp16(fp32).SerializeToString(), None, None
    if job.int8_mode == "dynamic":
        return quantize.to_int8_dynamic(fp32).SerializeToString(), None, None
    cal = _calibration(job, reference, progress)
    from agent.models import sensitivity  # imports onnx: only when converting

    options = OnnxBuildOptions(board_x=job.board, board_y=job.board)
    if job.smooth_alpha > 0:
        from agent.backends.onnx.smoothing import smoothing_scales

        skip = quantize.nodes_in_groups(fp32, job.keep_float or quantize.INT8_FLOAT_GROUPS)
        scales = smoothing_scales(fp32, cal, skip=skip, alpha=job.smooth_alpha)
        options = OnnxBuildOptions(board_x=job.board, board_y=job.board, prescale=scales)
        fp32 = build_onnx(read_network(job.model), options)
    if uses_im2col(job, fp32):
        # the same function with convolutions as im2col + MatMul: quantized ones then run as
        # int8 GEMMs (docs/conversion.md, "INT8 speed")
        fp32 = build_onnx(read_network(job.model), replace(options, im2col=True))
    if sensitivity.applies(job):
        int8_pass = sensitivity.int8_with_sensitivity_pass(job, fp32, cal, reference, progress, VERIFY_SEED)
        return int8_pass.data(), cal, int8_pass
    mode = quantize.int8_mode_options(job.int8_mode)
    with progress(f"INT8 calibration ({job.calibration_method})", len(cal)) as prog:
        model = quantize.to_int8_static(
            fp32,
            cal,
            method=job.calibration_method,
            quantize_outputs=mode["quantize_outputs"],
            float_residual_increments=mode["float_residual_increments"],
            keep_float=job.keep_float if job.keep_float is not None else quantize.INT8_FLOAT_GROUPS,
            weight_rounding=job.weight_rounding,
            progress=prog,
        )
    quantize.finish_im2col(model)
    return model.SerializeToString(), cal, None


def uses_im2col(job: ConvertJob, fp32: Any) -> bool:
    """Static INT8 (mode ``static``: float Conv outputs) of a conv net is made from the im2col
    graph; transformer nets and the qlinear modes keep ``Conv`` nodes."""
    from agent.backends.onnx.sensitivity import is_transformer

    return job.precision == "int8" and job.int8_mode == "static" and not is_transformer(fp32)


def _tflite_file(
    job: ConvertJob, net: Any, reference: NeuralNet, tmp: Path, progress: ProgressFactory
) -> tuple[Path, PositionSet | None]:
    out = tmp / f"converted{job.output.suffix or '.tflite'}"
    if job.tflite_builder == "writer":
        from agent.backends.tflite import writer as tflite_writer

        # INT8: the writer's choice (dynamic range: agent/backends/tflite/int8.py); only static
        # INT8 (build_tflite(int8_mode="static")) is calibrated
        mode = tflite_writer.int8_mode_for(net, "dynamic" if job.int8_mode == "dynamic" else "auto")
        static = job.precision == "int8" and mode == "static"
        cal = _calibration(job, reference, progress) if static else None
        if job.precision == "int8" and job.keep_float is None:
            out.write_bytes(_tflite_int8_sensitivity(job, net, cal, reference, mode, tmp, progress))
            return out, cal
        tflite_writer.write_tflite(
            net,
            out,
            job.precision,
            board=job.board,
            calibration=cal,
            int8_mode=mode,
            keep_float=job.keep_float,
        )
        return out, cal
    if job.tflite_builder != "tensorflow":
        raise ConversionError(f"unknown TFLite builder {job.tflite_builder!r}: expected writer or tensorflow")
    cal = _calibration(job, reference, progress) if job.precision.startswith("int8") else None
    from agent.backends.tflite import builder as tflite_builder

    def representative() -> Iterator[tuple[Any, Any]]:
        assert cal is not None
        for i in range(len(cal)):
            yield cal.spatial[i : i + 1], cal.global_[i : i + 1]

    tflite_builder.convert(
        net,
        out,
        job.precision,
        representative=representative if cal else None,
        board=job.board,
        int8=_tflite_int8(job, net) if job.precision == "int8" else None,
    )
    return out, cal


def _tflite_int8_sensitivity(
    job: ConvertJob,
    net: Any,
    cal: PositionSet | None,
    reference: NeuralNet,
    mode: str,
    tmp: Path,
    progress: ProgressFactory,
) -> bytes:
    """The writer's INT8 model with the float units chosen by the sensitivity pass
    (:mod:`agent.models.sensitivity`, units and variants :mod:`agent.backends.tflite.sensitivity`),
    each variant judged with LiteRT against the FP32 reference on held-out positions."""
    from agent.backends.tflite.sensitivity import WriterInt8
    from agent.models import sensitivity
    from agent.models.verify import compare_outputs, evaluate_all

    with progress("INT8 calibration (TFLite writer), every site", len(cal) if cal else 0):
        variants = WriterInt8(net, cal, board=job.board, int8_mode=mode)
    if cal is None:  # dynamic range: no calibration positions to keep the held-out ones apart from
        import numpy as np

        b = job.board
        cal = PositionSet(np.zeros((0, 22, b, b), np.float32), np.zeros((0, 19), np.float32), (), "none")
    held = sensitivity.held_out_positions(job, cal, reference, VERIFY_SEED)
    expected = evaluate_all(reference, held)
    trial_path = tmp / "variant.tflite"

    def measure(float_units: list[str]) -> dict[str, Any]:
        trial_path.write_bytes(variants.build(float_units))
        trial = TFLiteNet(trial_path, threads=job.threads, postprocess=net.postprocess)
        try:
            return compare_outputs(expected, evaluate_all(trial, held), held, net.postprocess)
        finally:
            trial.close()

    with progress(f"INT8 sensitivity pass ({variants.mode}, TFLite writer)", len(variants.units) + 1) as prog:
        report = sensitivity.choose_units(
            variants.units, measure, len(held), precision_thresholds=job.thresholds, progress=prog
        )
    trial_path.unlink(missing_ok=True)
    return variants.build(report.float_units, report.to_json())


def _tflite_int8(job: ConvertJob, net: Any) -> Any:
    """TFLite INT8 options: ``--int8-mode dynamic`` forces dynamic range, otherwise the builder's
    choice for the architecture (static selective for conv nets, dynamic for transformers)."""
    from agent.backends.tflite import builder as tflite_builder

    mode = "dynamic" if job.int8_mode == "dynamic" else "auto"
    return tflite_builder.int8_options(job.keep_float, mode=mode, net=net)


def _tflite_int8_manifest(job: ConvertJob, net: Any) -> dict[str, Any] | None:
    """What an INT8 TFLite model quantizes and keeps in float, for the manifest."""
    if job.target != "tflite" or job.precision != "int8":
        return None
    if job.tflite_builder == "writer":
        from agent.backends.tflite import int8, writer

        mode = writer.int8_mode_for(net, "dynamic" if job.int8_mode == "dynamic" else "auto")
        kept = list(job.keep_float) if job.keep_float is not None else "chosen by the sensitivity pass"
        return {
            "builder": "writer",
            "mode": mode,
            "float_always": list(int8.ALWAYS_FLOAT),
            "keep_float": kept,
        }
    result: dict[str, Any] = _tflite_int8(job, net).describe()
    return result


def _int8_sensitivity_entry(job: ConvertJob, data: bytes) -> dict[str, Any] | None:
    """The sensitivity pass's report stored in the converted model, or None when it did not run."""
    if job.target == "tflite" and job.precision == "int8" and job.tflite_builder == "writer":
        from agent.backends.tflite.sensitivity import read_report

        return read_report(data)
    from agent.models import sensitivity

    return sensitivity.manifest_entry(data) if sensitivity.applies(job) else None


def _tensorrt_file(job: ConvertJob, fp32: Any, tmp: Path) -> Path:
    from agent.backends.tensorrt import builder as tensorrt_builder

    onnx_path = tmp / "fp32.onnx"
    onnx_path.write_bytes(fp32.SerializeToString())
    settings = tensorrt_builder.BuildSettings(precision=job.precision, board=job.board)
    return tensorrt_builder.ensure_engine(onnx_path, tmp / "engines", settings)


def verify_with_progress(
    converted: NeuralNet,
    reference: NeuralNet,
    positions: PositionSet,
    post: Any,
    *,
    precision: str,
    thresholds: Any,
    progress: ProgressFactory,
) -> VerifyReport:
    """``verify`` with one progress bar over both networks' evaluations."""
    total = 2 * len(positions)
    with progress("verifying", total) as prog:
        done = [0]

        def step(n: int) -> None:
            done[0] += n
            prog(done[0], total)

        return verify(
            converted, reference, positions, post, precision=precision, thresholds=thresholds, progress=step
        )


def open_converted(
    path: Path,
    *,
    runtime: str | None = None,
    threads: int = 0,
    provider: str | None = None,
    manifest: Manifest | None = None,
) -> NeuralNet:
    """Open a network file given directly: a KataGo network with the numpy reference, a converted
    file (``.onnx``, ``.tflite``, ``.engine``/``.plan``) with the runtime its suffix names (or
    ``runtime``) and the post-processing parameters of its manifest where it has one."""
    runtime = runtime or runtime_for_file(path) or "numpy"
    if runtime == "numpy":
        return load_net(path, runtime="numpy", threads=threads or None)
    if runtime_for_file(path) is None:
        raise ModelStoreError(
            f"{path}: a KataGo network; runtime {runtime} loads a converted file: prepare it through "
            "the model store (ModelStore.prepare) or `katago-edge convert`"
        )
    manifest = manifest or read_manifest(path)
    post = manifest.extra.get("postprocess") if manifest else None
    params = PostProcessParams.from_dict(post) if post else None
    name = str(manifest.source.get("name", "")) if manifest else ""
    version = int(manifest.source.get("model_version", 0)) if manifest else 0
    precision = manifest.precision if manifest else "fp32"
    if runtime == "onnx":
        return OnnxNet(path, intra_op_threads=threads or None, providers=[provider] if provider else None)
    if runtime == "tflite":
        return TFLiteNet(
            path, threads=threads, name=name, model_version=version, precision=precision, postprocess=params
        )
    if runtime == "tensorrt":
        return TensorRTNet(path, name=name, model_version=version, precision=precision, postprocess=params)
    raise RuntimeUnavailable(f"{path}: runtime {runtime!r} does not load converted files")


def run_conversion(
    job: ConvertJob, progress: ProgressFactory, manifest_extra: dict[str, Any] | None = None
) -> tuple[VerifyReport, Path | None]:
    """Convert, verify, and write when verification passed (or ``force``); returns the report and
    the path written (None when refused). ``manifest_extra`` is added to the manifest (the model
    store's key and recipe); the manifest always carries the post-processing parameters and the
    time each stage took."""
    from agent.backends.onnx import quantize
    from agent.backends.onnx.builder import OnnxBuildOptions, build_onnx
    from agent.network.reader import read_network

    timings: dict[str, float] = {}
    clock = time.monotonic()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings[stage] = round(now - clock, 3)
        clock = now

    with progress(f"reading {job.model.name}, building the FP32 graph", 0):
        net = read_network(job.model)
        fp32 = build_onnx(net, OnnxBuildOptions(board_x=job.board, board_y=job.board))
        threads = job.threads or None
        reference = OnnxNet(fp32.SerializeToString(), intra_op_threads=threads)
    lap("read_and_build_fp32_s")
    cal: PositionSet | None = None
    int8_pass: Any = None
    with tempfile.TemporaryDirectory(prefix="katago-edge-convert-") as tmpdir:
        tmp = Path(tmpdir)
        if job.target == "onnx":
            with progress(f"converting to onnx {job.precision}", 0):
                data, cal, int8_pass = _onnx_bytes(job, fp32, reference, progress)
            converted: NeuralNet = OnnxNet(data, intra_op_threads=threads)
        else:
            if job.target == "tflite":
                with progress(f"building tflite {job.precision}", 0):
                    path, cal = _tflite_file(job, net, reference, tmp, progress)
            elif job.target == "tensorrt":
                with progress("building the TensorRT engine", 0):
                    path = _tensorrt_file(job, fp32, tmp)
            else:
                raise ConversionError(f"unknown target {job.target!r}")
            converted = open_converted(
                path, runtime=job.target, threads=job.threads, manifest=_bare_manifest(job, net)
            )
            data = path.read_bytes()
        lap(f"convert_{job.target}_{job.precision}_s")
        judge: NeuralNet = reference
        count = job.verify_positions
        if job.target == "onnx" and job.precision == "fp32":
            # The FP32 graph is every other conversion's reference: it is judged by the numpy
            # reference (checked against KataGo's own outputs), on a few positions since the two
            # differ by float rounding only.
            judge, count = NumpyNet(net), min(count, FP32_GRAPH_POSITIONS)
        with progress("collecting verification positions", count) as prog:
            positions = verification_positions(
                job.verify_source or job.calibration,
                count,
                reference,
                exclude=cal.ids if cal is not None else (),
                board=job.board,
                progress=prog,
            )
        report = verify_with_progress(
            converted,
            judge,
            positions,
            net.postprocess,
            precision=job.precision.split("-")[0],
            thresholds=job.thresholds,
            progress=progress,
        )
        converted.close()
        lap("verify_s")
        if int8_pass is not None and not report.passed:
            data, report, positions = _escalate(
                job, int8_pass, report, positions, reference, net.postprocess, cal, progress
            )
            lap("escalation_s")
    if not report.passed and not job.force:
        return report, None
    verification = report.to_json()
    verification["source"] = positions.source
    if not report.passed:
        verification["forced"] = True
    manifest = _bare_manifest(job, net)
    manifest.verification = verification
    manifest.calibration = (
        None
        if cal is None
        else {
            "source": cal.source,
            "method": job.calibration_method,
            "positions": len(cal),
            "ids": list(cal.ids),
        }
    )
    manifest.extra.update(
        {
            "board": job.board,
            "int8_mode": job.int8_mode if job.precision == "int8" else None,
            "int8_weight_rounding": job.weight_rounding
            if job.precision == "int8" and job.int8_mode != "dynamic"
            else None,
            "int8_float_groups": list(
                job.keep_float if job.keep_float is not None else quantize.INT8_FLOAT_GROUPS
            )
            if job.precision == "int8" and job.target != "tflite"
            else None,
            "tflite_int8": _tflite_int8_manifest(job, net),
            "timings": timings,
            **(manifest_extra or {}),
        }
    )
    entry = _int8_sensitivity_entry(job, data)
    if entry is not None:  # the float layers the pass chose, and its measurements
        manifest.extra.update(int8_float_groups=entry["float_units"], int8_sensitivity=entry)
    with progress(f"writing {job.output.name}", 0):
        write_network_and_manifest(job.output, data, manifest)
    return report, job.output


def _escalate(
    job: ConvertJob,
    int8_pass: Any,
    report: VerifyReport,
    positions: PositionSet,
    reference: NeuralNet,
    post: Any,
    cal: PositionSet | None,
    progress: ProgressFactory,
) -> tuple[bytes, VerifyReport, PositionSet]:
    """Verification-driven escalation of an INT8 graph the sensitivity pass built
    (:mod:`agent.models.sensitivity`): while verification refuses it, at most ``ESCALATIONS``
    times, keep more units float (chosen on the held-out and the refused positions) and verify on
    a fresh sample that no choice has seen. Returns the last graph, its report (earlier refusals
    in ``attempts``) and its verification positions."""
    from agent.models import sensitivity

    seen: list[str] = [*(cal.ids if cal is not None else ()), *int8_pass.held.ids]
    attempts: list[dict[str, Any]] = []
    data = int8_pass.data()
    for k in range(1, sensitivity.ESCALATIONS + 1):
        record = attempt_record(report, positions.source, len(int8_pass.report.float_units))
        attempts.append(record)
        seen.extend(positions.ids)
        logger.warning(
            "INT8 verification refused the graph with %d float units (%s); escalation %d of %d: "
            "keeping more units float, then verifying on fresh positions",
            len(int8_pass.report.float_units),
            "; ".join(report.failures),
            k,
            sensitivity.ESCALATIONS,
        )
        with progress(f"INT8 escalation {k}: keeping more units float", 0) as prog:
            changed = int8_pass.escalate(positions, record, progress=prog)
        if not changed:
            logger.warning(
                "INT8 escalation %d: the margin does not hold with all units but one float; refused", k
            )
            attempts.pop()  # the final report is that attempt
            break
        data = int8_pass.data()
        with progress(f"collecting verification positions (escalation {k})", job.verify_positions) as prog:
            positions = verification_positions(
                job.verify_source or job.calibration,
                job.verify_positions,
                reference,
                exclude=tuple(seen),
                board=job.board,
                progress=prog,
                seed=VERIFY_SEED + k * ESCALATION_SEED_STEP,
            )
        converted = OnnxNet(data, intra_op_threads=job.threads or None)
        try:
            report = verify_with_progress(
                converted,
                reference,
                positions,
                post,
                precision="int8",
                thresholds=job.thresholds,
                progress=progress,
            )
        finally:
            converted.close()
        if report.passed:
            break
    report.attempts = attempts
    return data, report, positions


def _bare_manifest(job: ConvertJob, net: Any) -> Manifest:
    """The manifest's identity part: format, precision, source and post-processing parameters."""
    return Manifest(
        format=job.target,
        precision=job.precision,
        file=job.output.name,
        sha256="",
        source=source_info(job.model, net.name, net.version),
        extra={"postprocess": net.postprocess.to_dict()},
    )
