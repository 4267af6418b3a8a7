"""KataGo network → Core ML ``.mlpackage`` (ML Program, iOS 16 / macOS 13 and later).

Interface (the same as every other format; dynamic batch 1..``MAX_BATCH``, buffer ``B x B``)::

    inputs   spatial      float32 [N, 22, B, B]   NCHW, channel 0 = on-board mask
             global       float32 [N, 19]
    outputs  policy       float32 [N, Cp, B*B]    raw, side to move
             policy_pass  float32 [N, Cp]
             value        float32 [N, 3]
             score_value  float32 [N, S]
             ownership    float32 [N, B*B]

Precisions (:data:`PRECISIONS`):

* ``fp32``: weights and compute in float32;
* ``fp16`` (the default): Core ML's FP16 compute precision, except the ops the ONNX FP16 pass
  keeps in FP32 (:func:`agent.backends.onnx.quantize.fp16_float_nodes`: trunk tip, heads,
  RMSNorms, the attention softmax with its key mask, mask and pooling bookkeeping; FP16 overflows
  there, e.g. b10c384's spatial RMSNorm sum of squares of 4e5, and the -1e9 key mask);
* ``int8``: FP16 compute with the Conv/MatMul weights stored as INT8 through
  ``coremltools.optimize.coreml.linear_quantize_weights`` (per output channel, linear symmetric),
  except the layers our ONNX INT8 keeps in float (``INT8_FLOAT_GROUPS``). Weight-only: no
  activation calibration (Core ML dequantizes the weights at load or on the fly).

Graph passes: none of coremltools' optimisation passes run (only the FP16 cast pass and the
folding of constant casts, :data:`FP16_PASSES`): the program is kept op for op as built, so that the structural check can compare it
with the ONNX graph; Core ML compiles (and fuses) it again on the device.

Metadata (``user_defined_metadata``): the ONNX keys ``katago.name``, ``katago.model_version``,
``katago.postprocess`` (JSON of the post-processing parameters), ``katago.board_x``,
``katago.board_y``, ``katago.builder_version``, ``katago.layer_groups``, plus ``katago.precision``
and ``katago.input_layout`` (``NCHW``).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.backends.coreml.program import INPUT_GLOBAL, INPUT_SPATIAL, build_program
from agent.backends.onnx.builder import OUTPUT_NAMES
from agent.errors import ConversionError, RuntimeUnavailable
from agent.network.model import Network

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
BUILDER_VERSION = "1"
MAX_BATCH = 64
#: the MIL op types whose constant weight INT8 stores as INT8 (and the weight's parameter)
QUANTIZED_WEIGHTS = {"conv": "weight", "matmul": "y"}
#: the only graph passes run: FP16 casts, then the casts of constants folded into FP16 constants
FP16_PASSES = ("common::add_fp16_cast", "common::const_elimination", "common::dead_code_elimination")


def import_coremltools() -> Any:
    """``coremltools``, or RuntimeUnavailable naming the extra (imported only when converting)."""
    try:
        import coremltools
    except ImportError as exc:
        raise RuntimeUnavailable(
            "Core ML conversion needs coremltools: pip install 'katago-edge[coreml]'"
        ) from exc
    return coremltools


@dataclass
class CoreMLBuild:
    """A converted model (not yet saved) and what it is made of."""

    model: Any  # coremltools.models.MLModel
    precision: str
    board: int
    onnx_names: dict[str, str]  # MIL op name -> ONNX node name
    fp32_ops: list[str] = field(default_factory=list)  # ONNX nodes kept in FP32 (fp16 / int8)
    quantized: list[str] = field(default_factory=list)  # ONNX nodes with INT8 weights (int8)


def build_coreml(network: Network, precision: str = "fp16", board: int = 19) -> CoreMLBuild:
    """Convert ``network`` to a Core ML ML Program at ``precision`` (in memory)."""
    if precision not in PRECISIONS:
        raise ConversionError(f"Core ML precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    ct = import_coremltools()
    from agent.backends.onnx import quantize
    from agent.backends.onnx.builder import OnnxBuildOptions, build_onnx

    onnx_model = build_onnx(network, OnnxBuildOptions(board_x=board, board_y=board))
    program, onnx_names, groups = build_program(network, board)
    keep32 = set(quantize.fp16_float_nodes(onnx_model)) if precision != "fp32" else set()
    compute: Any = ct.precision.FLOAT32
    if precision != "fp32":
        compute = ct.transform.FP16ComputePrecision(op_selector=_fp16_selector(onnx_names, keep32))
    batch = ct.RangeDim(lower_bound=1, upper_bound=MAX_BATCH, default=1)
    inputs = [
        ct.TensorType(name=INPUT_SPATIAL, shape=(batch, network.num_input_channels, board, board)),
        ct.TensorType(name=INPUT_GLOBAL, shape=(batch, network.num_input_global_channels)),
    ]

    def convert(prog: Any, compute: Any = ct.precision.FLOAT32, passes: tuple[str, ...] = ()) -> Any:
        # coremltools drops a TemporaryDirectory of weights unclosed in each conversion; its
        # ResourceWarning ("Implicitly cleaning up") comes at the next garbage collection
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Implicitly cleaning up", ResourceWarning)
            model = ct.convert(
                prog,
                convert_to="mlprogram",
                inputs=inputs,
                compute_precision=compute,
                minimum_deployment_target=ct.target.iOS16,
                pass_pipeline=ct.PassPipeline(pass_names=list(passes)),
            )
            gc.collect()
        return model

    try:
        model = convert(program, compute, FP16_PASSES if precision != "fp32" else ())
    except (ValueError, RuntimeError, TypeError, NotImplementedError) as exc:
        raise ConversionError(f"{network.name}: Core ML conversion failed: {exc}") from exc
    build = CoreMLBuild(model, precision, board, onnx_names, fp32_ops=sorted(keep32))
    if precision == "int8":
        floats = set(quantize.nodes_in_groups(onnx_model, quantize.INT8_FLOAT_GROUPS))
        build.model, build.quantized = _quantize_weights(model, onnx_names, floats, convert)
    _describe(build.model, network, precision, board, groups)
    logger.info(
        "built Core ML %s for %s: %d ops kept in FP32, %d INT8 weights",
        precision,
        network.name,
        len(build.fp32_ops),
        len(build.quantized),
    )
    return build


def _fp16_selector(onnx_names: dict[str, str], keep32: set[str]) -> Callable[[Any], bool]:
    """Core ML's op selector: True for the ops computed in FP16."""

    def selector(op: Any) -> bool:
        return onnx_names.get(op.name) not in keep32

    return selector


def origin(mil_op_name: str) -> str:
    """The name an op had when built (the FP16 pass appends ``_cast_fp16``)."""
    return mil_op_name.removesuffix("_cast_fp16")


def _quantize_weights(
    model: Any, onnx_names: dict[str, str], floats: set[str], convert: Callable[[Any], Any]
) -> tuple[Any, list[str]]:
    """INT8 Conv/MatMul weights (per output channel, symmetric) except the ``floats`` nodes.

    coremltools' ``linear_quantize_weights`` runs its default graph passes afterwards (fusing
    matmul+add into ``linear``, folding scales): its quantization pass is applied to the program
    instead, and the program converted again without passes (``convert``).
    """
    import coremltools.optimize.coreml as cto
    from coremltools.optimize.coreml._quantization_passes import linear_quantize_weights

    config = cto.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=0
    )
    program = model._mil_program
    names: dict[str, Any] = {}
    quantized: list[str] = []
    for op in program.functions["main"].operations:
        param = QUANTIZED_WEIGHTS.get(op.op_type)
        if param is None or param not in op.inputs:
            continue
        node = onnx_names.get(origin(op.name), "")
        weight = op.inputs[param].op
        if weight is None or weight.op_type != "const" or node in floats:
            continue
        names[weight.name] = config
        quantized.append(node)
    try:
        # an all-zero output channel (b7c96-cnorm has some) gets scale 0: coremltools divides by
        # it (a warning), the dequantized channel is 0 as it should be (the structural check)
        with np.errstate(divide="ignore", invalid="ignore"):
            linear_quantize_weights(
                config=cto.OptimizationConfig(global_config=None, op_name_configs=names)
            ).apply(program)
        return convert(program), sorted(quantized)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ConversionError(f"Core ML INT8 weight quantization failed: {exc}") from exc


def _describe(model: Any, network: Network, precision: str, board: int, groups: dict[str, list[str]]) -> None:
    meta = model.user_defined_metadata
    meta.update(
        {
            "katago.name": network.name,
            "katago.model_version": str(network.version),
            "katago.postprocess": json.dumps(network.postprocess.to_dict()),
            "katago.board_x": str(board),
            "katago.board_y": str(board),
            "katago.builder_version": BUILDER_VERSION,
            "katago.layer_groups": json.dumps(groups),
            "katago.precision": precision,
            "katago.input_layout": "NCHW",
        }
    )
    model.short_description = f"KataGo network {network.name} (model version {network.version}), {precision}"
    model.author = "katago-edge"
    model.input_description[INPUT_SPATIAL] = (
        "spatial features [N, 22, H, W] (NCHW), side to move, channel 0 = 1 on the board"
    )
    model.input_description[INPUT_GLOBAL] = "global features [N, 19]"
    descriptions = {
        "policy": "raw policy logits [N, Cp, H*W] (row-major y*W + x)",
        "policy_pass": "raw pass logit [N, Cp]",
        "value": "raw win/loss/no-result logits [N, 3]",
        "score_value": "raw score values [N, S] (see katago.postprocess)",
        "ownership": "raw ownership [N, H*W]",
    }
    for name in OUTPUT_NAMES:
        model.output_description[name] = descriptions[name]


def save_package(model: Any, target: Path) -> Path:
    """Write the ``.mlpackage`` directory atomically: saved into a temp folder beside ``target``,
    then renamed over it (the former package, if any, removed only after the rename succeeded)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staged = tmp / target.name
    try:
        model.save(str(staged))
        old = None
        if target.exists():
            old = tmp / "previous"
            os.replace(target, old)
        os.replace(staged, target)
    except OSError as exc:
        raise ConversionError(f"cannot write {target}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def package_size(path: Path) -> int:
    """Bytes in every file of a package directory."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
