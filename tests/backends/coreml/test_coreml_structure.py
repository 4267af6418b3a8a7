"""The structural check fails on deliberately broken MIL programs: an op removed, a weight
transposed, an epsilon changed, an INT8 zero point moved (each on a program read back from a saved
package, then edited with coremltools' own program API)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import Built

from agent.backends.coreml.structure import check_structure, load_program

pytestmark = [pytest.mark.needs_models, pytest.mark.slow]


def _main(program: Any) -> Any:
    return program.functions["main"]


def _op(program: Any, name: str) -> Any:
    return next(op for op in _main(program).operations if op.name == name)


def _set_const(program: Any, op: Any, param: str, value: np.ndarray) -> None:
    """Point ``op``'s ``param`` at a new constant ``value`` (only this op; others keep theirs)."""
    from coremltools.converters.mil import Builder as mb

    with _main(program):
        new = mb.const(val=value, before_op=op, name=f"{op.name}_{param}_edited")
    op.set_inputs(**{param: new})


def test_structure__passes_unedited(coreml_package: Callable[[str, str], Built]) -> None:
    b = coreml_package("b6c96", "fp32")
    report = check_structure(load_program(b.path), b.onnx, "fp32")
    assert report.passed, report.mismatches


def test_structure__missing_op_fails(coreml_package: Callable[[str, str], Built]) -> None:
    b = coreml_package("b6c96", "fp32")
    program = load_program(b.path)
    relu = _op(program, "rconv2_norm2_Relu")
    block = _main(program)
    block.replace_uses_of_var_after_op(anchor_op=relu, old_var=relu.outputs[0], new_var=relu.inputs["x"])
    block.remove_ops([relu])
    report = check_structure(program, b.onnx, "fp32")
    assert not report.passed
    assert "rconv2/norm2/Relu: no MIL op rconv2_norm2_Relu" in report.mismatches
    # its reader now reads the conv before it
    assert "rconv2/norm2/mask/Mul: input from rconv2_w1_Conv, expected rconv2_norm2_Relu" in report.mismatches


def test_structure__transposed_conv_weight_fails(coreml_package: Callable[[str, str], Built]) -> None:
    b = coreml_package("b6c96", "fp32")
    program = load_program(b.path)
    conv = _op(program, "rconv2_w2_Conv")
    w = conv.inputs["weight"].val
    assert w.shape[0] == w.shape[1]  # 96 -> 96: a transpose keeps the shape, only values show it
    _set_const(program, conv, "weight", np.ascontiguousarray(w.transpose(1, 0, 2, 3)))
    report = check_structure(program, b.onnx, "fp32")
    assert len(report.mismatches) == 1
    assert report.mismatches[0].startswith("rconv2/w2/Conv: constant rconv2/w2.w:")
    assert "values differ" in report.mismatches[0]


def test_structure__transposed_attention_weight_fails_in_fp16(
    coreml_package: Callable[[str, str], Built],
) -> None:
    b = coreml_package("b7c96-cnorm", "fp16")
    program = load_program(b.path)
    matmul = next(
        op for op in _main(program).operations if op.op_type == "matmul" and "q_proj_MatMul" in op.name
    )
    w = (
        matmul.inputs["y"].op.inputs["x"].val
        if matmul.inputs["y"].op.op_type == "cast"
        else matmul.inputs["y"].val
    )
    assert w.shape[0] == w.shape[1]
    _set_const(program, matmul, "y", np.ascontiguousarray(w.T))
    report = check_structure(program, b.onnx, "fp16")
    assert len(report.mismatches) == 1
    assert "q_proj/MatMul: constant model.blocks." in report.mismatches[0]
    assert "values differ" in report.mismatches[0]


def test_structure__wrong_rmsnorm_epsilon_fails(coreml_package: Callable[[str, str], Built]) -> None:
    b = coreml_package("b7c96-cnorm", "fp32")
    program = load_program(b.path)
    add = _op(program, "model_blocks_1_norm_Add")
    eps = np.asarray(add.inputs["y"].val)
    assert eps.size == 1 and float(eps.reshape(-1)[0]) == pytest.approx(1e-6)
    _set_const(program, add, "y", np.full_like(eps, 1e-5))
    report = check_structure(program, b.onnx, "fp32")
    assert len(report.mismatches) == 1
    assert report.mismatches[0].startswith(
        "model.blocks.1.norm/Add: constant const/1e-06: 1 of 1 values differ"
    )


def test_structure__asymmetric_int8_weight_fails(coreml_package: Callable[[str, str], Built]) -> None:
    from coremltools.converters.mil import Builder as mb

    b = coreml_package("b6c96", "int8")
    program = load_program(b.path)
    deq = next(op for op in _main(program).operations if op.op_type == "constexpr_affine_dequantize")
    zp = np.ones_like(deq.inputs["zero_point"].val)
    with _main(program):
        new = mb.constexpr_affine_dequantize(
            quantized_data=deq.inputs["quantized_data"].val,
            zero_point=zp,
            scale=deq.inputs["scale"].val,
            axis=int(deq.inputs["axis"].val),
            before_op=deq,
            name=f"{deq.name}_edited",
        )
    consumer = deq.outputs[0].child_ops[0]
    param = next(k for k, v in consumer.inputs.items() if v is deq.outputs[0])
    consumer.set_inputs(**{param: new})
    report = check_structure(program, b.onnx, "int8")
    assert any("zero points not 0" in m for m in report.mismatches), report.mismatches
    assert any("values differ" in m for m in report.mismatches), report.mismatches
