"""Read KataGo network files (``.bin.gz``, ``.bin``, ``.txt.gz``, ``.txt``; versions 8-17).

The format (``../shared/docs/katago-network-spec.md`` §1) is one stream of whitespace-separated
tokens. Float arrays have no stored length: the count comes from the preceding shape integers. In
binary files an array is ``@BIN@`` followed by ``4*n`` little-endian float32 bytes; in text files
it is ``n`` decimal tokens. Reading is all-or-nothing: any problem raises
:class:`~agent.errors.NetworkFileError` (or :class:`~agent.errors.UnsupportedNetworkError`) whose
message names the file, the record being read and the byte offset in the decompressed stream, and
no partial network is ever returned. Every byte must be consumed (trailing whitespace only).
"""

from __future__ import annotations

import gzip
import logging
import math
import re
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from agent.errors import NetworkFileError, UnsupportedNetworkError
from agent.network import model as m

logger = logging.getLogger(__name__)

_TOKEN = re.compile(rb"[ \t\n\r\v\f]*([^ \t\n\r\v\f]+)")
_WS = re.compile(rb"[ \t\n\r\v\f]*")
_MAX_SKIP_BEFORE_BIN = 100
T = TypeVar("T")


def read_network(path: str | Path) -> m.Network:
    """Read a network file; the suffix (case-insensitive) decides gzip and binary/text.

    ``.bin``/``.txt`` plain, ``.bin.gz``/``.txt.gz`` gzip, bare ``.gz``: binary if it holds
    ``@BIN@`` markers, else text. Other suffixes are rejected.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise NetworkFileError(f"{path}: cannot read network file: {exc}") from exc
    net = decode_network_file(raw, path.name, str(path))
    logger.debug("read %s: %s v%d, %d parameters", path, net.name, net.version, net.num_parameters)
    return net


def decode_network_file(raw: bytes, file_name: str, source: str) -> m.Network:
    """Parse the contents ``raw`` of a file called ``file_name`` (its suffix decides the format)."""
    lower = file_name.lower()
    if lower.endswith(".gz"):
        try:
            data = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise NetworkFileError(f"{source}: corrupt or truncated gzip data: {exc}") from exc
        stem = lower[:-3]
    else:
        data, stem = raw, lower
    if stem.endswith(".bin"):
        binary = True
    elif stem.endswith(".txt"):
        binary = False
    elif lower.endswith(".gz"):
        binary = b"@BIN@" in data
    else:
        raise NetworkFileError(
            f"{source}: unknown network file suffix (expected .bin.gz, .bin, .txt.gz or .txt)"
        )
    return read_network_bytes(data, binary=binary, source=source)


def read_network_bytes(data: bytes, *, binary: bool, source: str = "<bytes>") -> m.Network:
    """Parse an already decompressed token stream (see :func:`read_network`)."""
    return _Parser(data, binary, source).network()


class _Parser:
    def __init__(self, data: bytes, binary: bool, source: str) -> None:
        self.data = data
        self.binary = binary
        self.source = source
        self.pos = 0
        self.record = "header"
        self.version = 0
        self.last_start = 0  # where the last token read began (error offsets point there)

    # --- errors and tokens ----------------------------------------------------------------------

    def fail(self, what: str, *, at: int | None = None, unsupported: bool = False) -> NetworkFileError:
        cls = UnsupportedNetworkError if unsupported else NetworkFileError
        offset = self.pos if at is None else at
        return cls(f"{self.source}: record '{self.record}' at byte {offset}: {what}")

    def token(self, what: str) -> str:
        match = _TOKEN.match(self.data, self.pos)
        if match is None:
            raise self.fail(f"file ends where {what} was expected (truncated?)")
        self.pos = match.end()
        self.last_start = match.start(1)
        try:
            return match.group(1).decode("ascii")
        except UnicodeDecodeError as exc:
            raise self.fail(f"non-ASCII bytes where {what} was expected", at=match.start(1)) from exc

    def peek(self) -> str | None:
        match = _TOKEN.match(self.data, self.pos)
        return None if match is None else match.group(1).decode("ascii", "replace")

    def parse(self, what: str, conv: Callable[[str], T]) -> T:
        tok = self.token(what)
        try:
            return conv(tok)
        except ValueError as exc:
            raise self.fail(f"expected {what}, got {tok[:40]!r}", at=self.last_start) from exc

    def int_(self, what: str, lo: int | None = None, hi: int | None = None) -> int:
        value = self.parse(what, int)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.fail(f"{what} = {value} is out of range [{lo}, {hi}]", at=self.last_start)
        return value

    def float_(self, what: str, positive: bool = False) -> float:
        value = self.parse(what, float)
        if not math.isfinite(value) or (positive and value <= 0):
            raise self.fail(
                f"{what} = {value} must be {'> 0 and ' if positive else ''}finite", at=self.last_start
            )
        return value

    def bool_(self, what: str) -> bool:
        return bool(self.int_(what, 0, 1))

    def floats(self, n: int, what: str) -> m.F32:
        start = self.pos
        if self.binary:
            at = self.data.find(b"@", self.pos, self.pos + _MAX_SKIP_BEFORE_BIN + 1)
            if at < 0 or self.data[at : at + 5] != b"@BIN@":
                raise self.fail(f"expected '@BIN@' before {n} float32 values of {what}", at=start)
            begin = at + 5
            end = begin + 4 * n
            if end > len(self.data):
                raise self.fail(
                    f"file ends inside {what}: need {4 * n} bytes, {len(self.data) - begin} left (truncated?)",
                    at=begin,
                )
            arr = np.frombuffer(self.data, dtype="<f4", count=n, offset=begin).astype(np.float32)
            self.pos = end
        else:
            fast = self.text_floats_fast(n)
            arr = fast if fast is not None else self.text_floats_slow(n, what)
        if not np.isfinite(arr).all():
            bad = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise self.fail(f"{what} holds a non-finite value at index {bad}", at=start)
        arr.flags.writeable = False
        return arr

    def text_floats_fast(self, n: int) -> m.F32 | None:
        """``n`` decimal tokens parsed in bulk; None if they are not all numbers (the slow path
        then finds and reports the bad one) or the file ends first."""
        window = 16 * n + 64
        while True:
            chunk = self.data[self.pos : self.pos + window]
            parts = chunk.split(maxsplit=n)
            if len(parts) > n or self.pos + window >= len(self.data):
                break
            window *= 2
        if len(parts) < n:
            return None
        rest = parts[n] if len(parts) > n else b""
        try:
            arr = np.array(parts[:n]).astype(np.float32)
        except ValueError:
            return None
        self.pos += len(chunk) - len(rest)
        return arr

    def text_floats_slow(self, n: int, what: str) -> m.F32:
        values = []
        for i in range(n):
            tok = self.token(f"float {i} of {n} of {what}")
            try:
                values.append(float(tok))
            except ValueError as exc:
                raise self.fail(f"value {i} of {what} is not a number: {tok[:40]!r}") from exc
        return np.asarray(values, dtype=np.float32)

    # --- layers ---------------------------------------------------------------------------------

    def name(self, kind: str) -> str:
        self.record = f"<{kind} name>"
        name = self.token(f"{kind} name")
        self.record = name
        return name

    def conv(self, in_c: int | None = None, out_c: int | None = None) -> m.ConvLayer:
        name = self.name("conv")
        ky = self.int_("kernel height", 1)
        kx = self.int_("kernel width", 1)
        ic = self.int_("in channels", 1)
        oc = self.int_("out channels", 1)
        dy = self.int_("dilation y", 1)
        dx = self.int_("dilation x", 1)
        if ky % 2 == 0 or kx % 2 == 0:
            raise self.fail(f"kernel {ky}x{kx} must have odd sizes")
        self.expect(ic, in_c, "in channels")
        self.expect(oc, out_c, "out channels")
        w = self.floats(ky * kx * ic * oc, "conv weights").reshape(ky, kx, ic, oc)
        return m.ConvLayer(name, ky, kx, ic, oc, dy, dx, w)

    def channels_header(self, kind: str, channels: int | None) -> tuple[str, int]:
        """A layer's name and channel count, checked against ``channels`` (what feeds it)."""
        name = self.name(kind)
        c = self.int_("channels", 1)
        self.expect(c, channels, "channels")
        return name, c

    def norm_epsilon(self) -> float:
        """An RMS norm's epsilon, in (0, 1]."""
        eps = self.float_("epsilon", positive=True)
        if eps > 1:
            raise self.fail(f"epsilon {eps} must be in (0, 1]")
        return eps

    def bn(self, channels: int | None = None) -> m.BatchNormLayer:
        name, c = self.channels_header("batch norm", channels)
        eps = self.float_("epsilon", positive=True)
        has_scale = self.bool_("hasScale")
        has_bias = self.bool_("hasBias")
        mean = self.floats(c, "mean")
        var = self.floats(c, "variance")
        scale = self.floats(c, "scale") if has_scale else _const(c, 1.0)
        bias = self.floats(c, "bias") if has_bias else _const(c, 0.0)
        return m.BatchNormLayer(name, c, eps, has_scale, has_bias, mean, var, scale, bias)

    def act(self) -> m.ActivationLayer:
        name = self.name("activation")
        if self.version <= 10:
            return m.ActivationLayer(name, m.Activation.RELU)
        tok = self.token("activation kind")
        try:
            return m.ActivationLayer(name, m.Activation.from_token(tok))
        except ValueError as exc:
            raise self.fail(
                f"unknown activation kind {tok[:40]!r}", at=self.last_start, unsupported=True
            ) from exc

    def matmul(self, in_c: int | None = None, out_c: int | None = None) -> m.MatMulLayer:
        name = self.name("matmul")
        ic = self.int_("in channels", 1)
        oc = self.int_("out channels", 1)
        self.expect(ic, in_c, "in channels")
        self.expect(oc, out_c, "out channels")
        return m.MatMulLayer(name, ic, oc, self.floats(ic * oc, "matmul weights").reshape(ic, oc))

    def matbias(self, channels: int | None = None) -> m.MatBiasLayer:
        name, c = self.channels_header("matbias", channels)
        return m.MatBiasLayer(name, c, self.floats(c, "bias"))

    def rmsnorm(self, channels: int) -> m.RMSNormLayer:
        name, c = self.channels_header("rmsnorm", channels)
        eps = self.norm_epsilon()
        spatial = self.bool_("spatial")
        group = self.int_("cgroupSize", 0)
        if group != 0:
            raise self.fail(f"grouped RMSNorm (cgroupSize {group}) is not supported", unsupported=True)
        return m.RMSNormLayer(name, c, eps, spatial, group, self.floats(c, "gamma"), self.floats(c, "beta"))

    def trmsnorm(self, channels: int) -> m.TransformerRMSNorm:
        name, c = self.channels_header("transformer rmsnorm", channels)
        return m.TransformerRMSNorm(name, c, self.norm_epsilon(), self.floats(c, "weight"))

    def expect(self, got: int, want: int | None, what: str) -> None:
        if want is not None and got != want:
            raise self.fail(f"{what}: got {got}, expected {want}")

    # --- blocks ---------------------------------------------------------------------------------

    def blocks(self, count: int, width: int) -> tuple[m.Block, ...]:
        return tuple(self.block(width) for _ in range(count))

    def block(self, width: int) -> m.Block:
        self.record = "<block kind>"
        kind = self.token("block kind")
        start = self.last_start
        if kind not in m.BLOCK_KINDS:
            following = self.peek() or "<end of file>"
            self.record = following[:96]
            raise self.fail(
                f"unknown block kind {kind[:60]!r} (block {following[:96]!r}); "
                f"known kinds: {', '.join(m.BLOCK_KINDS)}",
                at=start,
                unsupported=True,
            )
        name = self.name(kind)
        if kind == m.OrdinaryBlock.KIND:
            pre_bn, pre_act = self.bn(width), self.act()
            regular = self.conv(width)
            mid_bn, mid_act = self.bn(regular.out_channels), self.act()
            final = self.conv(regular.out_channels, width)
            return m.OrdinaryBlock(name, pre_bn, pre_act, regular, mid_bn, mid_act, final)
        if kind == m.GPoolBlock.KIND:
            pre_bn, pre_act = self.bn(width), self.act()
            pooled = self.global_pooling(width)
            return m.GPoolBlock(name, pre_bn, pre_act, *pooled, self.conv(pooled[0].out_channels, width))
        if kind == m.NestedBottleneckBlock.KIND:
            self.record = name
            n_inner = self.int_("numInnerBlocks", 1)
            pre_bn, pre_act = self.bn(width), self.act()
            pre_conv = self.conv(width)
            mid = pre_conv.out_channels
            inner = self.blocks(n_inner, mid)
            post_bn, post_act = self.bn(mid), self.act()
            post_conv = self.conv(mid, width)
            return m.NestedBottleneckBlock(
                name, pre_bn, pre_act, pre_conv, inner, post_bn, post_act, post_conv
            )
        if kind == m.AttentionBlock.KIND:
            return self.attention(name, width)
        return self.ffn(name, width)

    def global_pooling(
        self, in_c: int
    ) -> tuple[
        m.ConvLayer,
        m.ConvLayer,
        m.BatchNormLayer,
        m.ActivationLayer,
        m.MatMulLayer,
        m.BatchNormLayer,
        m.ActivationLayer,
    ]:
        """What a global-pooling block and the policy head share: a regular and a pooled conv of
        ``in_c`` channels, the pooled one's norm and activation, a matmul of its 3 pooled features
        per channel to a bias of the regular channels, and the regular channels' norm and
        activation."""
        regular = self.conv(in_c)
        pooled = self.conv(in_c)
        pooled_bn, pooled_act = self.bn(pooled.out_channels), self.act()
        to_bias = self.matmul(3 * pooled.out_channels, regular.out_channels)
        bn, act = self.bn(regular.out_channels), self.act()
        return regular, pooled, pooled_bn, pooled_act, to_bias, bn, act

    def attention(self, name: str, width: int) -> m.AttentionBlock:
        nh = self.int_("numHeads", 1)
        nkv = self.int_("numKVHeads", 1)
        qd = self.int_("qHeadDim", 1)
        vd = self.int_("vHeadDim", 1)
        use_rope = self.bool_("useRope")
        learnable = self.bool_("learnableRope")
        if nh % nkv != 0:
            raise self.fail(f"numHeads {nh} is not a multiple of numKVHeads {nkv}")
        if use_rope and qd % 2 != 0:
            raise self.fail(f"qHeadDim {qd} must be even with RoPE")
        norm = self.trmsnorm(width)
        q = self.matmul(width, nh * qd)
        k = self.matmul(width, nkv * qd)
        v = self.matmul(width, nkv * vd)
        out = self.matmul(nh * vd, width)
        rope: m.LearnableRope | m.FixedRope | None = None
        if use_rope and learnable:
            rname = self.name("rope")
            nk = self.int_("rope numKVHeads")
            npairs = self.int_("rope numPairs")
            two = self.int_("rope last dim")
            self.expect(nk, nkv, "rope numKVHeads")
            self.expect(npairs, qd // 2, "rope numPairs")
            self.expect(two, 2, "rope last dim")
            freqs = self.floats(nk * npairs * 2, "rope freqs").reshape(nk, npairs, 2)
            rope = m.LearnableRope(rname, nk, npairs, freqs)
        elif use_rope:
            rname = self.name("rope")
            rope = m.FixedRope(rname, self.float_("rope theta", positive=True))
        return m.AttentionBlock(name, nh, nkv, qd, vd, use_rope, learnable, norm, q, k, v, out, rope)

    def ffn(self, name: str, width: int) -> m.FFNBlock:
        c = self.int_("channels", 1)
        self.expect(c, width, "channels (stack width)")
        ffn_c = self.int_("ffnChannels", 1)
        swiglu = self.bool_("useSwiGLU")
        norm = self.trmsnorm(c)
        lin1 = self.matmul(c, ffn_c)
        gate = self.matmul(c, ffn_c) if swiglu else None
        lin2 = self.matmul(ffn_c, c)
        return m.FFNBlock(name, c, ffn_c, swiglu, norm, lin1, gate, lin2)

    # --- network --------------------------------------------------------------------------------

    def network(self) -> m.Network:
        name = self.token("network name")
        self.version = self.int_("modelVersion")
        if not m.MIN_SUPPORTED_VERSION <= self.version <= m.MAX_SUPPORTED_VERSION:
            raise self.fail(
                f"model version {self.version} is not supported "
                f"(supported: {m.MIN_SUPPORTED_VERSION}..{m.MAX_SUPPORTED_VERSION})",
                unsupported=3 <= self.version < m.MIN_SUPPORTED_VERSION,
            )
        n_in = self.int_("numInputChannels")
        n_glob = self.int_("numInputGlobalChannels")
        if (n_in, n_glob) != (22, 19):
            raise self.fail(f"inputs {n_in}/{n_glob}: version {self.version} needs 22 spatial and 19 global")
        mults = m.DEFAULT_MULTIPLIERS
        if self.version >= 13:
            mults = tuple(self.float_(f"post-process multiplier {i}", positive=True) for i in range(7))
        header_ints: tuple[int, ...] = ()
        if self.version >= 15:
            header_ints = tuple(self.int_(f"header int {i}") for i in range(8))
            if header_ints[0] not in (0, 1) or header_ints[1] not in (0, 1):
                raise self.fail(f"header ints {header_ints}: slots 0 and 1 must be 0 or 1")
            if any(header_ints[2:]):
                raise self.fail(f"header ints {header_ints}: slots 2-7 are not known", unsupported=True)
        trunk = self.trunk(header_ints[0] if header_ints else 0)
        policy = self.policy_head(trunk.trunk_channels)
        value = self.value_head(trunk.trunk_channels)
        self.record = "<end of file>"
        tail = _WS.match(self.data, self.pos)
        end = tail.end() if tail else self.pos
        if end != len(self.data):
            raise self.fail(f"{len(self.data) - end} unexpected bytes after the value head", at=end)
        pp = m.PostProcessParams(self.version, policy.out_channels, *mults)
        return m.Network(name, self.version, n_in, n_glob, pp, header_ints, trunk, policy, value, self.source)

    def trunk(self, meta_version: int) -> m.Trunk:
        name = self.name("trunk")
        n_blocks = self.int_("numBlocks", 1)
        c = self.int_("trunk channels", 1)
        mid, regular, dilated, gpool = (self.int_(w, 1) for w in ("mid", "regular", "dilated", "gpool"))
        has_v15 = self.version >= 15
        norm_kind = 0
        reserved: tuple[int, ...] = ()
        if has_v15:
            norm_kind = self.int_("trunkNormKind", 0, 1)
            reserved = tuple(self.int_(f"trunk reserved {i}", 0, 0) for i in range(5))
        init_conv = self.conv(22, c)
        init_mul = self.matmul(19, c)
        meta = self.metadata_encoder(c) if meta_version > 0 else None
        blocks = self.blocks(n_blocks, c)
        tip_norm = self.rmsnorm(c) if norm_kind == 1 else self.bn(c)
        tip_act = self.act()
        return m.Trunk(
            name, n_blocks, c, mid, regular, dilated, gpool, has_v15, norm_kind, reserved,
            init_conv, init_mul, meta, blocks, tip_norm, tip_act,
        )  # fmt: skip

    def metadata_encoder(self, trunk_c: int) -> m.MetadataEncoder:
        name = self.name("metadata encoder")
        n = self.int_("numInputMetaChannels", 1)
        mul1 = self.matmul(n)
        bias1, act1 = self.matbias(mul1.out_channels), self.act()
        mul2 = self.matmul(mul1.out_channels)
        bias2, act2 = self.matbias(mul2.out_channels), self.act()
        mul3 = self.matmul(mul2.out_channels, trunk_c)
        return m.MetadataEncoder(name, n, mul1, bias1, act1, mul2, bias2, act2, mul3)

    def policy_head(self, trunk_c: int) -> m.PolicyHead:
        name = self.name("policy head")
        reserved: tuple[int, ...] = ()
        if self.version >= 17:
            out_c = self.int_("policyOutChannels")
            if out_c not in (2, 4):
                raise self.fail(f"policyOutChannels {out_c} must be 2 or 4")
            reserved = tuple(self.int_(f"policy reserved {i}", 0, 0) for i in range(3))
        else:
            out_c = 1 if self.version <= 11 else 2 if self.version <= 15 else 4
        p1, g1, g1_bn, g1_act, bias_mul, p1_bn, p1_act = self.global_pooling(trunk_c)
        p2 = self.conv(p1.out_channels, out_c)
        if self.version >= 15:
            pass_mul = self.matmul(3 * g1.out_channels, p1.out_channels)
            pass_bias, pass_act = self.matbias(p1.out_channels), self.act()
            pass_mul2 = self.matmul(p1.out_channels, out_c)
            return m.PolicyHead(
                name, out_c, reserved, p1, g1, g1_bn, g1_act, bias_mul, p1_bn, p1_act, p2,
                pass_mul, pass_bias, pass_act, pass_mul2,
            )  # fmt: skip
        pass_mul = self.matmul(3 * g1.out_channels, out_c)
        return m.PolicyHead(
            name,
            out_c,
            reserved,
            p1,
            g1,
            g1_bn,
            g1_act,
            bias_mul,
            p1_bn,
            p1_act,
            p2,
            pass_mul,
            None,
            None,
            None,
        )

    def value_head(self, trunk_c: int) -> m.ValueHead:
        name = self.name("value head")
        reserved: tuple[int, ...] = ()
        if self.version >= 17:
            reserved = tuple(self.int_(f"value reserved {i}", 0, 0) for i in range(3))
        v1 = self.conv(trunk_c)
        v1_bn, v1_act = self.bn(v1.out_channels), self.act()
        v2 = self.matmul(3 * v1.out_channels)
        v2_bias, v2_act = self.matbias(v2.out_channels), self.act()
        v3 = self.matmul(v2.out_channels, 3)
        v3_bias = self.matbias(3)
        n_score = 4 if self.version == 8 else 6
        sv3 = self.matmul(v2.out_channels, n_score)
        sv3_bias = self.matbias(n_score)
        own = self.conv(v1.out_channels, 1)
        return m.ValueHead(
            name, reserved, v1, v1_bn, v1_act, v2, v2_bias, v2_act, v3, v3_bias, sv3, sv3_bias, own
        )


def _const(n: int, value: float) -> m.F32:
    arr = np.full(n, value, dtype=np.float32)
    arr.flags.writeable = False
    return arr
