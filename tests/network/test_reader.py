"""Reading the four real KataGo networks (spec §1, Appendix A)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from edge_fixtures import model_file

from agent.network.model import (
    Activation,
    AttentionBlock,
    FFNBlock,
    FixedRope,
    GPoolBlock,
    LearnableRope,
    NestedBottleneckBlock,
    OrdinaryBlock,
    RMSNormLayer,
    iter_blocks,
)
from agent.network.reader import read_network


def test_read__b10c384_matches_appendix_a(models_dir: Path) -> None:
    net = read_network(model_file(models_dir, "b10c384"))
    assert (net.name, net.version) == ("b10c384h6nbttflrs", 15)
    assert net.postprocess.multipliers == (20.0, 20.0, 20.0, 20.0, 40.0, 0.25, 150.0)
    assert net.header_ints == (0,) * 8
    t = net.trunk
    assert (t.num_blocks, t.trunk_channels, t.mid_channels, t.norm_kind) == (10, 384, 192, 1)
    assert t.initial_conv.weight.shape == (3, 3, 22, 384)
    assert isinstance(t.tip_norm, RMSNormLayer) and t.tip_norm.spatial
    assert t.tip_act.kind is Activation.SILU
    assert all(isinstance(b, NestedBottleneckBlock) and len(b.blocks) == 4 for b in t.blocks)
    inner = [b for b in iter_blocks(t.blocks) if not isinstance(b, NestedBottleneckBlock)]
    assert [type(b) for b in inner[:4]] == [AttentionBlock, FFNBlock, AttentionBlock, FFNBlock]
    att = inner[0]
    assert isinstance(att, AttentionBlock) and isinstance(att.rope, LearnableRope)
    assert (att.num_heads, att.num_kv_heads, att.q_head_dim, att.v_head_dim) == (6, 6, 32, 32)
    assert att.rope.freqs.shape == (6, 16, 2)
    assert att.norm.epsilon == pytest.approx(1e-6)
    ph, vh = net.policy_head, net.value_head
    assert ph.out_channels == 2 and ph.gpool_to_pass_mul.weight.shape == (144, 48)
    assert ph.gpool_to_pass_mul2 is not None and ph.gpool_to_pass_mul2.weight.shape == (48, 2)
    assert vh.v2_mul.weight.shape == (288, 96) and vh.sv3_mul.out_channels == 6
    assert net.num_parameters > 10_000_000
    assert all(not a.flags.writeable and a.dtype == np.float32 for _, a in net.arrays())


def test_read__g170_b6c96_is_v8_convnet(models_dir: Path) -> None:
    net = read_network(model_file(models_dir, "b6c96"))
    assert net.version == 8 and net.header_ints == ()
    assert net.postprocess.multipliers == (20.0, 20.0, 20.0, 20.0, 40.0, 0.25, 30.0)
    assert net.trunk.initial_conv.weight.shape == (5, 5, 22, 96)
    kinds = [type(b) for b in net.trunk.blocks]
    assert OrdinaryBlock in kinds and GPoolBlock in kinds and len(kinds) == 6
    assert net.policy_channels == 1 and net.score_channels == 4
    assert net.policy_head.gpool_to_pass_mul2 is None
    assert all(b.pre_act.kind is Activation.RELU for b in net.trunk.blocks)


def test_read__b7c96_cnorm_has_fixed_rope(models_dir: Path) -> None:
    net = read_network(model_file(models_dir, "b7c96-cnorm"))
    assert net.version == 17 and net.trunk.norm_kind == 1
    atts = [b for b in iter_blocks(net.trunk.blocks) if isinstance(b, AttentionBlock)]
    assert atts and all(isinstance(a.rope, FixedRope) and a.rope.theta == 100.0 for a in atts)


def test_read__b7c96_gqa_has_grouped_heads(models_dir: Path) -> None:
    net = read_network(model_file(models_dir, "b7c96-gqa"))
    assert net.version == 17 and net.trunk.norm_kind == 0
    atts = [b for b in iter_blocks(net.trunk.blocks) if isinstance(b, AttentionBlock)]
    assert {(a.num_heads, a.num_kv_heads, a.q_head_dim, a.v_head_dim) for a in atts} == {(6, 3, 32, 16)}
    ffns = [b for b in iter_blocks(net.trunk.blocks) if isinstance(b, FFNBlock)]
    assert ffns and all(f.use_swiglu and f.linear_gate is not None for f in ffns)
