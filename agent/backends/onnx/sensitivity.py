"""Graph pieces of the INT8 sensitivity pass: quantization units, and a QDQ graph with some of
its layers put back in float.

**Units** (:func:`quantization_units`) partition the layers that static INT8 can quantize
(``Conv``/``MatMul`` with a constant weight, not the attention score/value MatMuls) by the
builder's ``katago.layer_groups`` metadata, by where they sit: ``initial``, ``policy_head``,
``value_head``, ``block<i>`` (b6c96: 9 units; the b7c96 transformers: 17, each block there is
either an attention or an FFN block; b10c384: 13). Until 2026-12-07 a transformer layer was also
in a unit of its kind across all blocks (``attention_qkv``, ``ffn_out``, ...): those units
overlapped the blocks, their costs did not add up, and the pass was not run on transformers
(docs/conversion.md). :func:`is_transformer` still tells the nets apart (conv nets are quantized
from the im2col graph).

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

from agent.backends.onnx.quantize import activation_matmuls, layer_groups, nodes_in_groups, prune_graph

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
    units: dict[str, list[str]] = {}
    seen: set[str] = set()
    for group in [g for g in groups if g in PLACES or g.startswith("block")]:
        if not groups.get(group):
            continue
        members = set(nodes_in_groups(model, [group]))
        nodes = [n for n in quantizable if n in members and n not in seen]
        if nodes:
            units[group] = nodes
            seen.update(nodes)
    rest = [n for n in quantizable if n not in seen]
    if rest:
        units["other"] = rest
    return units


def is_transformer(model: onnx.ModelProto) -> bool:
    """Whether the graph has quantizable transformer layers (attention, FFN, bottleneck)."""
    groups = layer_groups(model)
    kinds = [kind for kind in KINDS if groups.get(kind)]
    return bool(kinds) and bool(set(nodes_in_groups(model, kinds)) & set(quantizable_nodes(model)))


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
