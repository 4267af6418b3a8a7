"""Write KataGo network files, and make tiny random networks for tests (spec §1, §6).

``write_network(net, path)`` emits exactly the token stream :mod:`agent.network.reader` reads
(one token per line like KataGo's exporter; float arrays as ``@BIN@`` + little-endian float32 in
``.bin``/``.bin.gz`` files, as ``%.9g`` decimals in ``.txt``/``.txt.gz``), so write -> read gives
identical weights. ``tiny_network(...)`` builds a small random network that satisfies KataGo's
loader checks (§6.1): 22/19 inputs, odd kernels, BN epsilon > 0, activation tokens from v11 on,
v8 4 score outputs / v9+ 6, v15+ pass MLP, v17 reserved ints. Weights are N(0, 1/fan_in) so
outputs stay in a sane range.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from agent.fsutil import atomic_write_bytes
from agent.network import model as m


def write_network(net: m.Network, path: str | Path) -> Path:
    """Write ``net`` to ``path`` atomically; the suffix picks gzip and binary/text like the reader."""
    path = Path(path)
    lower = path.name.lower()
    stem = lower[:-3] if lower.endswith(".gz") else lower
    data = network_to_bytes(net, binary=not stem.endswith(".txt"))
    if lower.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    return atomic_write_bytes(path, data)


def network_to_bytes(net: m.Network, *, binary: bool = True) -> bytes:
    """The uncompressed file contents of ``net``."""
    w = _Writer(binary, net.version)
    w.network(net)
    return b"".join(w.out)


class _Writer:
    def __init__(self, binary: bool, version: int) -> None:
        self.binary = binary
        self.version = version
        self.out: list[bytes] = []

    def tok(self, *values: object) -> None:
        for v in values:
            if isinstance(v, bool):
                v = int(v)
            self.out.append(f"{v!r}\n".encode() if isinstance(v, float) else f"{v}\n".encode())

    def arr(self, a: m.F32) -> None:
        flat = np.asarray(a, dtype="<f4").reshape(-1)
        if self.binary:
            self.out.append(b"@BIN@" + flat.tobytes() + b"\n")
        else:
            self.out.append("".join(f"{float(x):.9g}\n" for x in flat).encode())

    def conv(self, c: m.ConvLayer) -> None:
        self.tok(c.name, c.kernel_y, c.kernel_x, c.in_channels, c.out_channels, c.dilation_y, c.dilation_x)
        self.arr(c.weight)

    def bn(self, b: m.BatchNormLayer) -> None:
        self.tok(b.name, b.channels, b.epsilon, b.has_scale, b.has_bias)
        self.arr(b.mean)
        self.arr(b.variance)
        if b.has_scale:
            self.arr(b.scale)
        if b.has_bias:
            self.arr(b.bias)

    def act(self, a: m.ActivationLayer) -> None:
        self.tok(a.name)
        if self.version >= 11:
            self.tok(a.kind.token)

    def matmul(self, layer: m.MatMulLayer) -> None:
        self.tok(layer.name, layer.in_channels, layer.out_channels)
        self.arr(layer.weight)

    def matbias(self, layer: m.MatBiasLayer) -> None:
        self.tok(layer.name, layer.channels)
        self.arr(layer.bias)

    def trms(self, n: m.TransformerRMSNorm) -> None:
        self.tok(n.name, n.channels, n.epsilon)
        self.arr(n.weight)

    def rmsnorm(self, r: m.RMSNormLayer) -> None:
        self.tok(r.name, r.channels, r.epsilon, r.spatial, r.cgroup_size)
        self.arr(r.gamma)
        self.arr(r.beta)

    def rope(self, r: m.LearnableRope | m.FixedRope) -> None:
        if isinstance(r, m.LearnableRope):
            self.tok(r.name, r.num_kv_heads, r.num_pairs, 2)
            self.arr(r.freqs)
        else:
            self.tok(r.name, r.theta)

    def metadata_encoder(self, e: m.MetadataEncoder) -> None:
        self.tok(e.name, e.num_input_channels)
        self.layers(e)

    def layers(self, record: Any) -> None:
        """The layers of ``record`` (a block, head, trunk or encoder) as the file has them: in the
        order of its fields, which is the file's (the reader builds each record from what it reads,
        in that order). Its other fields (name, sizes, flags) are the caller's to write; a layer
        that is absent (None) has no record in the file."""
        for f in fields(record):
            value = getattr(record, f.name)
            if isinstance(value, tuple):  # the blocks of a trunk or a nested bottleneck (or reserved ints)
                for inner in value:
                    if not isinstance(inner, int):
                        self.block(inner)
            elif type(value) in _LAYER_WRITERS:
                _LAYER_WRITERS[type(value)](self, value)

    def block(self, b: m.Block) -> None:
        self.tok(b.KIND, b.name)
        if isinstance(b, m.NestedBottleneckBlock):
            self.tok(len(b.blocks))
        elif isinstance(b, m.AttentionBlock):
            self.tok(b.num_heads, b.num_kv_heads, b.q_head_dim, b.v_head_dim, b.use_rope, b.learnable_rope)
        elif isinstance(b, m.FFNBlock):
            self.tok(b.channels, b.ffn_channels, b.use_swiglu)
        self.layers(b)

    def network(self, net: m.Network) -> None:
        self.tok(net.name, net.version, net.num_input_channels, net.num_input_global_channels)
        if net.version >= 13:
            self.tok(*net.postprocess.multipliers)
        self.tok(*net.header_ints)
        t = net.trunk
        self.tok(t.name, t.num_blocks, t.trunk_channels, t.mid_channels, t.regular_channels)
        self.tok(t.dilated_channels, t.gpool_channels)
        if t.has_v15_fields:
            self.tok(t.norm_kind, *t.reserved)
        self.layers(t)
        p = net.policy_head
        self.tok(p.name)
        if net.version >= 17:
            self.tok(p.out_channels, *p.reserved)
        self.layers(p)
        v = net.value_head
        self.tok(v.name, *v.reserved)
        self.layers(v)


# How each kind of layer record is written.
_LAYER_WRITERS: dict[type, Callable[[_Writer, Any], None]] = {
    m.ConvLayer: _Writer.conv,
    m.BatchNormLayer: _Writer.bn,
    m.ActivationLayer: _Writer.act,
    m.MatMulLayer: _Writer.matmul,
    m.MatBiasLayer: _Writer.matbias,
    m.TransformerRMSNorm: _Writer.trms,
    m.RMSNormLayer: _Writer.rmsnorm,
    m.LearnableRope: _Writer.rope,
    m.FixedRope: _Writer.rope,
    m.MetadataEncoder: _Writer.metadata_encoder,
}


# --- tiny random networks --------------------------------------------------------------------------


class _Rand:
    def __init__(self, seed: int, act: m.Activation) -> None:
        self.rng = np.random.default_rng(seed)
        self.act_kind = act

    def f32(self, shape: tuple[int, ...], std: float) -> m.F32:
        a = (self.rng.standard_normal(shape) * std).astype(np.float32)
        a.flags.writeable = False
        return a

    def conv(self, name: str, ic: int, oc: int, k: int = 3) -> m.ConvLayer:
        return m.ConvLayer(name, k, k, ic, oc, 1, 1, self.f32((k, k, ic, oc), (k * k * ic) ** -0.5))

    def bn(self, name: str, c: int, scale: bool = True) -> m.BatchNormLayer:
        ones = np.ones(c, np.float32)
        var = (0.5 + self.rng.random(c)).astype(np.float32)
        sc = (1 + self.f32((c,), 0.1)) if scale else ones
        return m.BatchNormLayer(
            name, c, 1e-5, scale, True, self.f32((c,), 0.1), _ro(var), _ro(sc), self.f32((c,), 0.1)
        )

    def act(self, name: str) -> m.ActivationLayer:
        return m.ActivationLayer(name, self.act_kind)

    def mat(self, name: str, ic: int, oc: int) -> m.MatMulLayer:
        return m.MatMulLayer(name, ic, oc, self.f32((ic, oc), ic**-0.5))

    def bias(self, name: str, c: int) -> m.MatBiasLayer:
        return m.MatBiasLayer(name, c, self.f32((c,), 0.1))

    def trms(self, name: str, c: int) -> m.TransformerRMSNorm:
        return m.TransformerRMSNorm(name, c, 1e-6, _ro(1 + self.f32((c,), 0.1)))

    def ordinary(self, name: str, c: int) -> m.OrdinaryBlock:
        return m.OrdinaryBlock(
            name, self.bn(f"{name}.n1", c), self.act(f"{name}.a1"), self.conv(f"{name}.c1", c, c),
            self.bn(f"{name}.n2", c), self.act(f"{name}.a2"), self.conv(f"{name}.c2", c, c),
        )  # fmt: skip

    def gpool(self, name: str, c: int) -> m.GPoolBlock:
        r, g = max(c - 2, 1), 2
        return m.GPoolBlock(
            name, self.bn(f"{name}.n1", c), self.act(f"{name}.a1"), self.conv(f"{name}.cr", c, r),
            self.conv(f"{name}.cg", c, g), self.bn(f"{name}.ng", g), self.act(f"{name}.ag"),
            self.mat(f"{name}.gmul", 3 * g, r), self.bn(f"{name}.n2", r), self.act(f"{name}.a2"),
            self.conv(f"{name}.c2", r, c),
        )  # fmt: skip

    def attention(self, name: str, c: int, rope: str) -> m.AttentionBlock:
        nh, nkv, qd, vd = 2, 1, 4, 4
        rope_rec: m.LearnableRope | m.FixedRope | None = None
        if rope == "learnable":
            rope_rec = m.LearnableRope(f"{name}.rope", nkv, qd // 2, self.f32((nkv, qd // 2, 2), 0.5))
        elif rope == "fixed":
            rope_rec = m.FixedRope(f"{name}.rope", 100.0)
        return m.AttentionBlock(
            name, nh, nkv, qd, vd, rope != "none", rope == "learnable", self.trms(f"{name}.norm", c),
            self.mat(f"{name}.q", c, nh * qd), self.mat(f"{name}.k", c, nkv * qd),
            self.mat(f"{name}.v", c, nkv * vd), self.mat(f"{name}.o", nh * vd, c), rope_rec,
        )  # fmt: skip

    def ffn(self, name: str, c: int) -> m.FFNBlock:
        f = 2 * c
        return m.FFNBlock(
            name, c, f, True, self.trms(f"{name}.norm", c), self.mat(f"{name}.l1", c, f),
            self.mat(f"{name}.lg", c, f), self.mat(f"{name}.l2", f, c),
        )  # fmt: skip

    def block(self, kind: str, name: str, c: int, rope: str) -> m.Block:
        if kind == "ordinary":
            return self.ordinary(name, c)
        if kind == "gpool":
            return self.gpool(name, c)
        if kind == "attention":
            return self.attention(name, c, rope)
        if kind == "ffn":
            return self.ffn(name, c)
        if kind == "nested":
            inner = (self.attention(f"{name}.b0", c, rope), self.ffn(f"{name}.b1", c))
            return m.NestedBottleneckBlock(
                name, self.bn(f"{name}.np", c), self.act(f"{name}.ap"), self.conv(f"{name}.cp", c, c, 1), inner,
                self.bn(f"{name}.nq", c), self.act(f"{name}.aq"), self.conv(f"{name}.cq", c, c, 1),
            )  # fmt: skip
        raise ValueError(f"unknown tiny block kind {kind!r} (ordinary, gpool, attention, ffn, nested)")


def tiny_network(
    version: int = 15,
    *,
    blocks: Sequence[str] = ("ordinary", "gpool"),
    channels: int = 8,
    rms_tip: bool = False,
    rope: str = "learnable",
    activation: m.Activation = m.Activation.RELU,
    policy_channels: int | None = None,
    seed: int = 0,
    name: str | None = None,
) -> m.Network:
    """A small random KataGo network (spec §6) for tests; ``blocks`` kinds: ordinary, gpool,
    attention, ffn, nested (a nested bottleneck holding attention + SwiGLU FFN).

    ``rms_tip`` (v>=15) uses a spatial RMSNorm trunk tip; ``rope`` is learnable, fixed or none.
    ``policy_channels`` defaults to the version's (1 for v<=11, 2 for 12-15 and 17, 4 for 16).
    """
    if not m.MIN_SUPPORTED_VERSION <= version <= m.MAX_SUPPORTED_VERSION:
        raise ValueError(f"version {version} outside {m.MIN_SUPPORTED_VERSION}..{m.MAX_SUPPORTED_VERSION}")
    if version <= 10 and activation is not m.Activation.RELU:
        raise ValueError("files of version <= 10 can only hold ReLU activations")
    if rms_tip and version < 15:
        raise ValueError("an RMSNorm trunk tip needs version >= 15")
    default_pc = 1 if version <= 11 else 4 if version == 16 else 2
    pc = policy_channels or default_pc
    if version != 17 and pc != default_pc:
        raise ValueError(f"version {version} has {default_pc} policy channels")
    r = _Rand(seed, activation)
    c, p, g, v, v2 = channels, 4, 4, 4, 8
    body = tuple(r.block(kind, f"model.blocks.{i}", c, rope) for i, kind in enumerate(blocks))
    tip: m.BatchNormLayer | m.RMSNormLayer = r.bn("model.norm_trunkfinal", c)
    if rms_tip:
        tip = m.RMSNormLayer(
            "model.norm_trunkfinal", c, 1e-6, True, 0, _ro(1 + r.f32((c,), 0.1)), r.f32((c,), 0.1)
        )
    trunk = m.Trunk(
        "trunk", len(body), c, c, c, c, c, version >= 15, int(rms_tip), (0,) * 5 if version >= 15 else (),
        r.conv("model.conv_spatial", 22, c), r.mat("model.linear_global", 19, c), None, body, tip,
        r.act("model.act_trunkfinal"),
    )  # fmt: skip
    v15 = version >= 15
    policy = m.PolicyHead(
        "model.policy_head", pc, (0, 0, 0) if version >= 17 else (), r.conv("p.conv1p", c, p, 1),
        r.conv("p.conv1g", c, g, 1), r.bn("p.biasg", g, scale=False), r.act("p.actg"), r.mat("p.linear_g", 3 * g, p),
        r.bn("p.bias2", p, scale=False), r.act("p.act2"), r.conv("p.conv2p", p, pc, 1),
        r.mat("p.linear_pass", 3 * g, p if v15 else pc), r.bias("p.linear_pass_bias", p) if v15 else None,
        r.act("p.act_pass") if v15 else None, r.mat("p.linear_pass2", p, pc) if v15 else None,
    )  # fmt: skip
    n_score = 4 if version == 8 else 6
    value = m.ValueHead(
        "model.value_head", (0, 0, 0) if version >= 17 else (), r.conv("v.conv1", c, v, 1),
        r.bn("v.bias1", v, scale=False), r.act("v.act1"), r.mat("v.linear2", 3 * v, v2), r.bias("v.bias2", v2),
        r.act("v.act2"), r.mat("v.linear_valuehead", v2, 3), r.bias("v.bias_valuehead", 3),
        r.mat("v.linear_miscvaluehead", v2, n_score), r.bias("v.bias_miscvaluehead", n_score),
        r.conv("v.conv_ownership", v, 1, 1),
    )  # fmt: skip
    mults = (20.0, 20.0, 20.0, 20.0, 40.0, 0.25, 150.0) if version >= 13 else m.DEFAULT_MULTIPLIERS
    return m.Network(
        name or f"tiny-b{len(body)}c{c}-v{version}", version, 22, 19, m.PostProcessParams(version, pc, *mults),
        (0,) * 8 if version >= 15 else (), trunk, policy, value,
    )  # fmt: skip


def _ro(a: m.F32) -> m.F32:
    a = np.asarray(a, dtype=np.float32)
    a.flags.writeable = False
    return a
