"""``katago-edge convert`` and ``katago-edge verify``.

``convert MODEL --to onnx|tflite|tensorrt|coreml --precision fp32|fp16|int8 [-o OUT]`` builds the
converted network in memory (or a temp file), verifies it against the FP32 reference
(:mod:`agent.models.verify`) on positions that were not used for calibration, and only then
writes it with its manifest (:mod:`agent.models.manifest`). A network that misses its
thresholds is refused (exit 1, nothing written) unless ``--force``.

INT8 calibration positions come from ``--calibration SGF_FILE_OR_FOLDER``, or, without records,
from self-play with the FP32 network. Verification positions come from ``--positions``, else the
calibration records (minus the calibration positions), else self-play with another seed.

TFLite files are written by :mod:`agent.backends.tflite.writer` (no TensorFlow; ``--tflite-builder
tensorflow`` uses :mod:`agent.backends.tflite.builder` instead), TensorRT engines are built by
:mod:`agent.backends.tensorrt.builder`; each is imported only when asked for.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.cli import strength as strength_command
from agent.errors import ConversionError
from agent.models.verify import MIN_POSITIONS, Threshold, VerifyReport

logger = logging.getLogger(__name__)

TARGETS: dict[str, tuple[str, ...]] = {
    "onnx": ("fp32", "fp16", "int8"),
    "tflite": ("fp32", "fp16", "int8", "int8-full"),
    "tensorrt": ("fp32", "fp16", "int8"),
    "coreml": ("fp32", "fp16", "int8"),
}
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "tensorrt": ".engine", "coreml": ".mlpackage"}
DEFAULT_PRECISION = {"coreml": "fp16"}  # Core ML's FP16 compute precision; every other target: fp32
ProgressFn = Callable[[int, int], None]


# --- progress: a rich bar on a terminal, plain log lines otherwise --------------------------------


@contextmanager
def progress_reporter(description: str, total: int) -> Iterator[Callable[..., None]]:
    """Yields ``step(done, total, note="")``; ``note`` is a status shown with the count (a match's
    score and interval)."""
    if sys.stderr.isatty():
        from rich.progress import Progress as RichProgress

        with RichProgress(transient=True) as bar:
            task = bar.add_task(description, total=total)

            def update(done: int, tot: int, note: str = "") -> None:
                desc = f"{description} {note}" if note else description
                bar.update(task, completed=done, total=tot, description=desc)

            yield update
        return
    step = max(total // 10, 1)
    last = [-step]

    def log(done: int, tot: int, note: str = "") -> None:
        if note:  # slow steps with a status (match games): every one
            logger.info("%s: %d/%d %s", description, done, tot, note)
        elif done - last[0] >= step or done == tot:
            last[0] = done
            logger.info("%s: %d/%d", description, done, tot)

    yield log


# --- CLI -----------------------------------------------------------------------------------------


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--positions", type=Path, metavar="SGF", help="SGF file or folder for verification")
    parser.add_argument(
        "--verify-positions", type=int, default=MIN_POSITIONS, metavar="N", help="default 200"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for evaluation (0 = runtime default)"
    )
    parser.add_argument(
        "--threshold",
        nargs=3,
        action="append",
        default=[],
        metavar=("METRIC", "OP", "VALUE"),
        help='override a threshold, e.g. --threshold policy_top1_agreement ">=" 0.9',
    )
    parser.add_argument("--json", action="store_true", help="print the verification report as JSON")
    parser.add_argument(
        "--store", type=Path, metavar="DIR", help="model store folder (default: $KATAGO_EDGE_CACHE/models)"
    )
    parser.add_argument("--profile", metavar="NAME", help="take threshold overrides from this device profile")


def configure_convert(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="KataGo network (.bin.gz, .bin, .txt.gz, .txt)")
    parser.add_argument("--to", required=True, choices=sorted(TARGETS), help="target format")
    parser.add_argument(
        "--precision",
        default=None,
        help="fp32, fp16, int8 (tflite also: int8-full); default fp32, coreml fp16",
    )
    parser.add_argument("-o", "--output", type=Path, help="output file (default: beside MODEL or in .)")
    parser.add_argument(
        "--calibration", type=Path, metavar="SGF", help="SGF file/folder for INT8 calibration"
    )
    parser.add_argument(
        "--calibration-method", default="percentile", choices=["minmax", "percentile", "entropy"]
    )
    parser.add_argument("--calibration-positions", type=int, default=256, metavar="N")
    parser.add_argument(
        "--int8-mode",
        default="static",
        choices=["static", "static-mixed", "static-qlinear", "dynamic"],
        help="ONNX INT8: static (QDQ, float Conv/MatMul outputs), static-mixed (int8 outputs except "
        "the residual increments, which stay float), static-qlinear (int8 outputs too: fastest on conv "
        "nets, less accurate), dynamic (weight-only). TFLite INT8 (the writer) is dynamic range "
        "whatever this says (static only with --tflite-builder tensorflow)",
    )
    parser.add_argument(
        "--keep-float",
        metavar="GROUPS",
        help="comma-separated layer groups left in float in INT8 (default: a sensitivity pass on "
        "held-out positions chooses them, docs/conversion.md; groups: block<i>, bottleneck, "
        "attention_qkv, attention_out, ffn_in, ffn_out, initial, policy_head, value_head)",
    )
    parser.add_argument(
        "--weight-rounding",
        default="gptq",
        choices=["gptq", "nearest"],
        help="static INT8 weight rounding: gptq (calibrated error feedback, default) or nearest",
    )
    parser.add_argument(
        "--smooth",
        type=float,
        default=0.0,
        metavar="ALPHA",
        help="SmoothQuant alpha for static INT8 (0 = off)",
    )
    parser.add_argument("--board", type=int, default=19, help="buffer size the network is built for")
    parser.add_argument(
        "--tflite-builder",
        default="writer",
        choices=["writer", "tensorflow"],
        help="TFLite: writer (the flatbuffer written directly, no TensorFlow; default) or tensorflow "
        "(TensorFlow's converter, needs the convert extra; also int8-full)",
    )
    parser.add_argument("--force", action="store_true", help="write the network even if verification fails")
    _add_common(parser)


def configure_verify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "converted", type=Path, help="converted network (.onnx, .tflite, .engine, .mlpackage)"
    )
    parser.add_argument("--reference", required=True, type=Path, help="the FP32 KataGo network it came from")
    parser.add_argument("--precision", help="thresholds to apply (default: from the file / manifest)")
    _add_common(parser)
    strength_command.add_arguments(parser)


def _profile_thresholds(name: str, precision: str) -> dict[str, Threshold]:
    """The ``[verify.<precision>]`` overrides of the shipped profile ``name``."""
    from agent.profiles import load_profiles

    for profile in load_profiles():
        if profile.name == name:
            tables = {str(prec): table for prec, table in profile.verify.items()}
            return {k: (op, float(v)) for k, (op, v) in tables.get(precision, {}).items()}
    raise ConversionError(f"no profile named {name!r}")


def _thresholds(args: argparse.Namespace, precision: str | None = None) -> dict[str, Threshold]:
    out: dict[str, Threshold] = {}
    if getattr(args, "profile", None) and precision:
        out.update(_profile_thresholds(args.profile, precision.split("-")[0]))
    for metric, op, value in args.threshold:
        try:
            out[metric] = (op, float(value))
        except ValueError as exc:
            raise ConversionError(f"--threshold {metric} {op} {value}: VALUE must be a number") from exc
    return out


def _print_report(report: VerifyReport, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.summary())


def _default_output(model: Path, target: str, precision: str) -> Path:
    stem = model.name.split(".")[0]
    folder = model.parent if os.access(model.parent, os.W_OK) else Path.cwd()
    return folder / f"{stem}.{precision}{SUFFIX[target]}"


def command_convert(args: argparse.Namespace) -> int:
    from agent.models.store import ModelStore, Recipe, VerificationRefused, copy_artifact, default_store_root
    from agent.progress import ProgressDisplay

    target = args.to
    precision = args.precision or DEFAULT_PRECISION.get(target, "fp32")
    if precision not in TARGETS[target]:
        raise ConversionError(
            f"precision {precision!r} is not supported for {target} (supported: {', '.join(TARGETS[target])})"
        )
    if not args.model.is_file():
        raise ConversionError(f"{args.model}: no such network file")
    recipe = Recipe(
        target,
        precision,
        board=args.board,
        calibration=args.calibration,
        calibration_positions=args.calibration_positions,
        calibration_method=args.calibration_method,
        int8_mode=args.int8_mode,
        weight_rounding=args.weight_rounding,
        keep_float=tuple(g for g in args.keep_float.split(",") if g) if args.keep_float is not None else None,
        verify_source=args.positions,
        verify_positions=args.verify_positions,
        thresholds=tuple((m, op, v) for m, (op, v) in _thresholds(args, precision).items()),
        smooth_alpha=args.smooth,
        tflite_builder=args.tflite_builder,
    )
    store = ModelStore(args.store or default_store_root())
    output = args.output or _default_output(args.model, target, precision)
    try:
        with ProgressDisplay(f"converting {args.model.name} to {recipe.label}") as progress:
            artifact = store.prepare(
                args.model,
                recipe,
                progress=progress,
                threads=args.threads,
                force=args.force,
                retry_refused=True,
            )
    except VerificationRefused as exc:
        _print_report(exc.report, args)
        print(
            f"katago-edge convert: {target} {precision} network refused (verification failed); "
            f"nothing written. Try the next steps above, or --force to write it anyway. {peak_memory_text()}",
            file=sys.stderr,
        )
        return 1
    if artifact.manifest is not None and artifact.manifest.verification:
        from agent.models.coreml import report_from_json

        _print_report(report_from_json(artifact.manifest.verification), args)
    entry = artifact.manifest.extra.get("int8_sensitivity") if artifact.manifest is not None else None
    if entry and not args.json:  # which layers the sensitivity pass kept in float, and why
        from agent.models.sensitivity import summary_of

        print(summary_of(entry))
    if not artifact.built_now:
        print(f"already in the model store: {artifact.path}", file=sys.stderr)
    copy_artifact(artifact, output)
    print(
        f"wrote {output} (manifest {output.name}.manifest.json; stored as {artifact.path}); "
        f"{peak_memory_text()}",
        file=sys.stderr,
    )
    return 0


def peak_memory_text() -> str:
    """Peak resident memory of this process (and of children it waited for), for issue #21's
    "conversion under 1.5 GB" check: a Pi serving while it converts must not run out of memory."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    text = f"peak memory {own:.0f} MB"
    return text + (f" (a child process {children:.0f} MB)" if children > 0 else "")


def _verify_coreml(args: argparse.Namespace) -> int:
    """``verify X.mlpackage``: the structural check against the ONNX graph of ``--reference``,
    and on macOS the numerical verification too (agent.models.coreml)."""
    from agent.backends.coreml.runtime import can_predict
    from agent.models.coreml import check_package, numerical_verifier
    from agent.models.manifest import read_manifest
    from agent.models.pipeline import ConvertJob
    from agent.network.reader import read_network

    if not args.converted.is_dir():
        raise ConversionError(f"{args.converted}: no such Core ML package")
    manifest = read_manifest(args.converted)
    precision = args.precision or (manifest.precision if manifest else "fp16")
    board = int(manifest.extra.get("board", 19)) if manifest else 19
    network = read_network(args.reference)
    numerical = None
    if can_predict():
        from agent.backends.onnx.builder import OnnxBuildOptions, build_onnx
        from agent.backends.onnx.runtime import OnnxNet

        job = ConvertJob(
            model=args.reference,
            target="coreml",
            precision=precision,
            output=args.converted,
            verify_source=args.positions,
            verify_positions=args.verify_positions,
            thresholds=_thresholds(args, precision),
            board=board,
        )
        fp32 = build_onnx(network, OnnxBuildOptions(board_x=board, board_y=board))
        numerical = numerical_verifier(job, network, OnnxNet(fp32.SerializeToString()), progress_reporter)
    else:
        print(
            "Core ML cannot run models on this machine (macOS/iOS only): structural check only",
            file=sys.stderr,
        )
    report = check_package(args.converted, network, precision, board=board, numerical=numerical)
    _print_report(report, args)
    return 0 if report.passed else 1


def command_verify(args: argparse.Namespace) -> int:
    if args.games:
        return strength_command.run_match(args, progress_reporter)
    from agent.models.manifest import read_manifest
    from agent.models.pipeline import open_converted, verification_positions, verify_with_progress
    from agent.models.store import ModelStore, Recipe, default_store_root

    if args.converted.suffix == ".mlpackage":
        return _verify_coreml(args)
    if not args.converted.is_file():
        raise ConversionError(f"{args.converted}: no such file")
    manifest = read_manifest(args.converted)
    converted = open_converted(args.converted, threads=args.threads)
    precision = args.precision or (manifest.precision if manifest else converted.info.precision)
    store = ModelStore(args.store or default_store_root())
    reference = store.open(store.prepare(args.reference, Recipe("onnx", "fp32")), threads=args.threads)
    cal = manifest.calibration if manifest and manifest.calibration else {}
    positions = verification_positions(
        args.positions
        or (Path(cal["source"][4:]) if str(cal.get("source", "")).startswith("sgf:") else None),
        args.verify_positions,
        reference,
        exclude=cal.get("ids", []),
        board=converted.info.board_x,
    )
    report = verify_with_progress(
        converted,
        reference,
        positions,
        reference.postprocess_params,
        precision=precision,
        thresholds=_thresholds(args, precision),
        progress=progress_reporter,
    )
    _print_report(report, args)
    return 0 if report.passed else 1
