"""Graph pieces of the INT8 sensitivity pass: quantization units, and a QDQ graph with some of
its layers put back in float.

**Units** (:func:`quantization_units`) partition the layers that static INT8 can quantize
(``Conv``/``MatMul`` with a constant weight, not the attention score/value MatMuls) by the
builder's ``katago.layer_groups`` metadata: ``initial``, ``policy_head``, ``value_head``, and per
trunk block ``block<i>`` (conv nets: b6c96 has 9 units) or, in transformer nets, one unit per
block and kind of layer, ``block<i>.<kind>`` (kinds: ``bottleneck``, ``attention_qkv``,
``attention_out``, ``ffn_in``, ``ffn_out``; the b7c96 transformers: 31 units, b10c384: 53). Until
2026-12-07 a transformer layer was in its block's unit and in a unit of its kind across all
blocks: the units overlapped and their costs did not add up; whole blocks alone are too coarse
(the SwiGLU output projections, ``ffn_out``, are what matters: docs/conversion.md).

**Start units** (:func:`start_units`): on transformer nets the pass starts from the units of
:data:`~agent.backends.onnx.quantize.INT8_FLOAT_GROUPS` in float (chosen by measurement on
b10c384) and only adds to them; on conv nets it starts from every layer in INT8.

**Float copies** (:func:`with_float_nodes`): onnxruntime's QDQ graph feeds each quantized node
``DequantizeLinear`` outputs (weights stored as INT8, activations through ``QuantizeLinear`` /
``DequantizeLinear``). Rewiring a node's inputs to the float activation and the FP32 graph's
weight and bias makes that node float again; the Q/DQ nodes left without a consumer are removed.
Activation ranges come from the FP32 graph's calibration and GPTQ rounds each layer on its own,
so the copy is the graph that quantizing with those nodes excluded would give, without a second
calibration.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from agent.backends.onnx.quantize import (
    INT8_FLOAT_GROUPS,
    activation_matmuls,
    layer_groups,
    nodes_in_groups,
    prune_graph,
)

PLACES = ("initial", "policy_head", "value_head")
KINDS = ("bottleneck", "attention_qkv", "attention_out", "ffn_in", "ffn_out")


def quantizable_nodes(model: onnx.ModelProto) -> list[str]:
    """Conv/MatMul nodes with a constant weight, except attention MatMuls (always float)."""
    consts = {i.name for i in model.graph.initializer}
    skip = set(activation_matmuls(model))
    return [
        n.name
        for n in model.graph.node
        if n.op_type in ("Conv", "MatMul") and n.input[1] in consts and n.name not in skip
    ]


def quantization_units(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Unit name -> its quantizable node names, in graph order (module docstring): a partition
    of :func:`quantizable_nodes`; nodes in no place or block are the unit ``other``."""
    groups = layer_groups(model)
    quantizable = quantizable_nodes(model)
    kind_of = {n: kind for kind in KINDS if groups.get(kind) for n in nodes_in_groups(model, [kind])}
    units: dict[str, list[str]] = {}
    seen: set[str] = set()
    for group in [g for g in groups if g in PLACES or g.startswith("block")]:
        if not groups.get(group):
            continue
        members = set(nodes_in_groups(model, [group]))
        for n in quantizable:
            if n in members and n not in seen:
                kind = kind_of.get(n) if group.startswith("block") else None
                units.setdefault(f"{group}.{kind}" if kind else group, []).append(n)
                seen.add(n)
    rest = [n for n in quantizable if n not in seen]
    if rest:
        units["other"] = rest
    return units


def is_transformer(model: onnx.ModelProto) -> bool:
    """Whether the graph has quantizable transformer layers (attention, FFN, bottleneck)."""
    groups = layer_groups(model)
    kinds = [kind for kind in KINDS if groups.get(kind)]
    return bool(kinds) and bool(set(nodes_in_groups(model, kinds)) & set(quantizable_nodes(model)))


def start_units(model: onnx.ModelProto) -> list[str]:
    """The units the pass starts from in float (module docstring): on transformer nets those
    inside :data:`~agent.backends.onnx.quantize.INT8_FLOAT_GROUPS`, else none."""
    if not is_transformer(model):
        return []
    inside = set(nodes_in_groups(model, INT8_FLOAT_GROUPS))
    return [unit for unit, nodes in quantization_units(model).items() if set(nodes) <= inside]


def with_float_nodes(quant: onnx.ModelProto, fp32: onnx.ModelProto, nodes: Iterable[str]) -> onnx.ModelProto:
    """A copy of the static QDQ graph ``quant`` in which ``nodes`` read float inputs again.

    Every other node that is not a quantized Conv/MatMul reads float activations too: onnxruntime
    shares one Q/DQ pair among all readers of a tensor, so pooling and mask nodes beside a
    quantized conv would otherwise read rounded values."""
    wanted = set(nodes)
    quantized = set(quantizable_nodes(fp32)) - wanted
    out = onnx.ModelProto.FromString(quant.SerializeToString())
    graph = out.graph
    producer = {o: n for n in graph.node for o in n.output}
    fp32_nodes = {n.name: n for n in fp32.graph.node}
    fp32_inits = {i.name: i for i in fp32.graph.initializer}
    have = {i.name for i in graph.initializer}
    quant_inits = have.copy()
    doomed: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name in quantized or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            source = dq.input[0]
            if source in quant_inits:  # a weight or bias: the FP32 graph's tensor
                float_name = fp32_nodes[node.name].input[i]
                if float_name == name:  # an INT32 bias dequantized under its float name
                    doomed.append(dq)
                if float_name not in have:
                    graph.initializer.append(fp32_inits[float_name])
                    have.add(float_name)
                node.input[i] = float_name
            else:  # an activation: the tensor before QuantizeLinear
                q = producer.get(source)
                if q is not None and q.op_type == "QuantizeLinear":
                    node.input[i] = q.input[0]
    for dq in doomed:
        graph.node.remove(dq)
    prune_graph(graph, initializers=True)
    return out
