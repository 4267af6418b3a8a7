"""A parsed KataGo network: frozen dataclasses holding float32 numpy weights.

This is the one in-memory form every consumer builds from: the numpy reference forward pass, the
ONNX builder, the TFLite / TensorRT builders and the writer. It mirrors the file's record structure
(``../shared/docs/katago-network-spec.md`` §1) one to one, so a network read and written again is
byte-for-byte the same token stream.

Layouts (all arrays are ``float32``, C-contiguous, **read-only**; ``.copy()`` before mutating):

========================  ==================================  =====================================
record                    array                               layout
========================  ==================================  =====================================
``ConvLayer``             ``weight``                          ``[kY, kX, inC, outC]`` (file order;
                                                              ``oc`` fastest). ONNX/PyTorch OIHW is
                                                              ``weight.transpose(3, 2, 0, 1)``
``BatchNormLayer``        ``mean``, ``variance``, ``scale``,  ``[C]``; missing scale is all 1,
                          ``bias``                            missing bias all 0. Use
                                                              ``merged_scale``/``merged_bias``
``MatMulLayer``           ``weight``                          ``[inC, outC]``: ``y = x @ weight``
``MatBiasLayer``          ``bias``                            ``[C]``: ``y = x + bias``
``RMSNormLayer`` (tip)    ``gamma``, ``beta``                 ``[C]``
``TransformerRMSNorm``    ``weight``                          ``[C]`` (no bias)
``LearnableRope``         ``freqs``                           ``[numKVHeads, qHeadDim/2, 2]``,
                                                              last axis ``(freqX, freqY)``
========================  ==================================  =====================================

Semantics are in the spec's §2: convolutions are cross-correlations with "same" zero padding and
no bias; every BN is followed by an activation and the product is multiplied by the board mask.
The raw network outputs are from the side to move; see :mod:`agent.network.postprocess`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

MIN_SUPPORTED_VERSION = 8  # V7 inputs (22 spatial, 19 global)
MAX_SUPPORTED_VERSION = 17


class Activation(enum.IntEnum):
    """Activation kinds with KataGo's internal codes (``activations.h``)."""

    IDENTITY = 0
    RELU = 1
    MISH = 2
    SILU = 3

    @property
    def token(self) -> str:
        """The file token, e.g. ``ACTIVATION_SILU`` (only written for model version >= 11)."""
        return "ACTIVATION_" + self.name

    @classmethod
    def from_token(cls, token: str) -> Activation:
        if not token.startswith("ACTIVATION_") or token[len("ACTIVATION_") :] not in cls.__members__:
            raise ValueError(f"unknown activation kind {token!r}")
        return cls[token[len("ACTIVATION_") :]]


# --- layers ----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ConvLayer:
    """Convolution, no bias, stride 1, "same" zero padding ``(k//2)*dil``; weight ``[kY,kX,inC,outC]``."""

    name: str
    kernel_y: int
    kernel_x: int
    in_channels: int
    out_channels: int
    dilation_y: int
    dilation_x: int
    weight: F32

    @property
    def oihw(self) -> F32:
        """The kernel as ``[outC, inC, kY, kX]`` (ONNX ``Conv`` / PyTorch layout)."""
        return np.ascontiguousarray(self.weight.transpose(3, 2, 0, 1))


@dataclass(frozen=True, eq=False)
class BatchNormLayer:
    """Fixed-statistics BN: ``y = x * merged_scale + merged_bias`` per channel (always then activated).

    ``has_scale`` / ``has_bias`` say whether the file stored them (a bias-only layer is written with
    ``has_scale = False``); the arrays are filled with 1 / 0 when absent. ``merged_*`` are computed
    in float32 exactly as KataGo does at load.
    """

    name: str
    channels: int
    epsilon: float
    has_scale: bool
    has_bias: bool
    mean: F32
    variance: F32
    scale: F32
    bias: F32

    @cached_property
    def merged_scale(self) -> F32:
        return (self.scale / np.sqrt(self.variance + np.float32(self.epsilon))).astype(np.float32)

    @cached_property
    def merged_bias(self) -> F32:
        return (self.bias - self.merged_scale * self.mean).astype(np.float32)


@dataclass(frozen=True, eq=False)
class ActivationLayer:
    """An activation record. Files of version <= 10 carry no kind token and always mean ReLU."""

    name: str
    kind: Activation


@dataclass(frozen=True, eq=False)
class MatMulLayer:
    """Dense layer without bias: ``y = x @ weight`` with ``weight`` ``[inC, outC]``."""

    name: str
    in_channels: int
    out_channels: int
    weight: F32


@dataclass(frozen=True, eq=False)
class MatBiasLayer:
    """Bias add ``y = x + bias``, ``bias`` ``[C]``."""

    name: str
    channels: int
    bias: F32


@dataclass(frozen=True, eq=False)
class RMSNormLayer:
    """Trunk-tip RMSNorm (``trunk_norm_kind == 1``), always followed by the tip activation.

    ``spatial``: one statistic per batch row over all channels and on-board positions
    (``r = 1/sqrt(sum x^2 / (A*C) + eps)``); otherwise per position over channels. Then
    ``t = act(x * r * gamma + beta) * mask``. ``cgroup_size`` is always 0 (grouped RMSNorm is not
    supported by KataGo either).
    """

    name: str
    channels: int
    epsilon: float
    spatial: bool
    cgroup_size: int
    gamma: F32
    beta: F32


@dataclass(frozen=True, eq=False)
class TransformerRMSNorm:
    """Per-position RMSNorm over channels, ``x / sqrt(mean(x^2) + eps) * weight``; 0 off board."""

    name: str
    channels: int
    epsilon: float
    weight: F32


# --- blocks ----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class OrdinaryBlock:
    """``trunk += final(BNACT_mid(regular(BNACT_pre(trunk))))`` (kind token ``ordinary_block``)."""

    name: str
    pre_bn: BatchNormLayer
    pre_act: ActivationLayer
    regular_conv: ConvLayer
    mid_bn: BatchNormLayer
    mid_act: ActivationLayer
    final_conv: ConvLayer

    KIND = "ordinary_block"


@dataclass(frozen=True, eq=False)
class GPoolBlock:
    """Global-pooling residual block (``gpool_block``); ``gpool_to_bias_mul`` is ``[3G, R]``.

    ``a = BNACT_pre(trunk); r = regular(a); g = BNACT_gpool(gpool_conv(a));
    r += gpool(g) @ gpool_to_bias_mul; trunk += final(BNACT_mid(r))``.
    """

    name: str
    pre_bn: BatchNormLayer
    pre_act: ActivationLayer
    regular_conv: ConvLayer
    gpool_conv: ConvLayer
    gpool_bn: BatchNormLayer
    gpool_act: ActivationLayer
    gpool_to_bias_mul: MatMulLayer
    mid_bn: BatchNormLayer
    mid_act: ActivationLayer
    final_conv: ConvLayer

    KIND = "gpool_block"


@dataclass(frozen=True, eq=False)
class LearnableRope:
    """Learnable 2-D RoPE: angle(h, p, s) = xs*freqs[k,p,0] + ys*freqs[k,p,1], k = KV head of h."""

    name: str
    num_kv_heads: int
    num_pairs: int
    freqs: F32  # [num_kv_heads, num_pairs, 2]


@dataclass(frozen=True, eq=False)
class FixedRope:
    """Fixed 2-D RoPE with base ``theta``: first half of the pairs rotate by y, second half by x."""

    name: str
    theta: float


@dataclass(frozen=True, eq=False)
class AttentionBlock:
    """Transformer self-attention over all buffer positions (``transformer_attention_block``).

    ``q_proj`` is ``[W, num_heads*q_head_dim]``, ``k_proj`` ``[W, num_kv_heads*q_head_dim]``,
    ``v_proj`` ``[W, num_kv_heads*v_head_dim]``, ``out_proj`` ``[num_heads*v_head_dim, W]``; head
    ``h`` occupies columns ``h*dim .. h*dim+dim-1``. Query head ``h`` reads KV head
    ``h // (num_heads // num_kv_heads)`` (grouped-query attention). Keys off the board get
    probability 0; scores are scaled by ``1/sqrt(q_head_dim)``. ``rope`` is None when unused.
    """

    name: str
    num_heads: int
    num_kv_heads: int
    q_head_dim: int
    v_head_dim: int
    use_rope: bool
    learnable_rope: bool
    norm: TransformerRMSNorm
    q_proj: MatMulLayer
    k_proj: MatMulLayer
    v_proj: MatMulLayer
    out_proj: MatMulLayer
    rope: LearnableRope | FixedRope | None

    KIND = "transformer_attention_block"


@dataclass(frozen=True, eq=False)
class FFNBlock:
    """Transformer feed-forward (``transformer_ffn_block``): SwiGLU when ``linear_gate`` is set.

    ``x += ((silu(n @ linear1) * (n @ linear_gate)) @ linear2) * mask`` with ``n = norm(x)``.
    """

    name: str
    channels: int
    ffn_channels: int
    use_swiglu: bool
    norm: TransformerRMSNorm
    linear1: MatMulLayer
    linear_gate: MatMulLayer | None
    linear2: MatMulLayer

    KIND = "transformer_ffn_block"


@dataclass(frozen=True, eq=False)
class NestedBottleneckBlock:
    """``m = pre_conv(BNACT_pre(trunk)); m = blocks(m); trunk += post_conv(BNACT_post(m))``.

    The inner ``blocks`` have width ``pre_conv.out_channels`` and may be of any kind.
    """

    name: str
    pre_bn: BatchNormLayer
    pre_act: ActivationLayer
    pre_conv: ConvLayer
    blocks: tuple[Block, ...]
    post_bn: BatchNormLayer
    post_act: ActivationLayer
    post_conv: ConvLayer

    KIND = "nested_bottleneck_block"


Block = OrdinaryBlock | GPoolBlock | NestedBottleneckBlock | AttentionBlock | FFNBlock

BLOCK_KINDS = (
    OrdinaryBlock.KIND,
    GPoolBlock.KIND,
    NestedBottleneckBlock.KIND,
    AttentionBlock.KIND,
    FFNBlock.KIND,
)


# --- trunk and heads -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class MetadataEncoder:
    """SGF-metadata encoder of human-SL nets (``metaEncoderVersion == 1``); parsed, not evaluated."""

    name: str
    num_input_channels: int
    mul1: MatMulLayer
    bias1: MatBiasLayer
    act1: ActivationLayer
    mul2: MatMulLayer
    bias2: MatBiasLayer
    act2: ActivationLayer
    mul3: MatMulLayer


@dataclass(frozen=True, eq=False)
class Trunk:
    """Initial conv + global matmul bias, the block stack, and the trunk tip norm + activation.

    ``mid/regular/dilated/gpool_channels`` are size hints from the trunk header only (never
    checked against the layers). ``norm_kind`` is 0 (BN tip) or 1 (RMSNorm tip); v<15 files have
    no such field and read as 0 with ``has_v15_fields = False``.
    """

    name: str
    num_blocks: int
    trunk_channels: int
    mid_channels: int
    regular_channels: int
    dilated_channels: int
    gpool_channels: int
    has_v15_fields: bool
    norm_kind: int
    reserved: tuple[int, ...]  # the five ints after norm_kind (v>=15), all 0
    initial_conv: ConvLayer
    initial_matmul: MatMulLayer
    metadata_encoder: MetadataEncoder | None
    blocks: tuple[Block, ...]
    tip_norm: BatchNormLayer | RMSNormLayer
    tip_act: ActivationLayer


@dataclass(frozen=True, eq=False)
class PolicyHead:
    """Policy head (spec §2.8). ``out_channels`` = policy channels (1, 2 or 4).

    Pass logits: v<=14 ``gpool @ gpool_to_pass_mul`` (``[3G, Cp]``); v>=15 a 2-layer MLP
    ``act(gpool @ gpool_to_pass_mul + gpool_to_pass_bias) @ gpool_to_pass_mul2``.
    """

    name: str
    out_channels: int
    reserved: tuple[int, ...]  # v17: three 0s after out_channels; otherwise ()
    p1_conv: ConvLayer
    g1_conv: ConvLayer
    g1_bn: BatchNormLayer
    g1_act: ActivationLayer
    gpool_to_bias_mul: MatMulLayer
    p1_bn: BatchNormLayer
    p1_act: ActivationLayer
    p2_conv: ConvLayer
    gpool_to_pass_mul: MatMulLayer
    gpool_to_pass_bias: MatBiasLayer | None
    pass_act: ActivationLayer | None
    gpool_to_pass_mul2: MatMulLayer | None


@dataclass(frozen=True, eq=False)
class ValueHead:
    """Value head (spec §2.9): value logits ``[3]``, score values ``[S]``, ownership conv ``[V -> 1]``."""

    name: str
    reserved: tuple[int, ...]  # v17: three 0s; otherwise ()
    v1_conv: ConvLayer
    v1_bn: BatchNormLayer
    v1_act: ActivationLayer
    v2_mul: MatMulLayer
    v2_bias: MatBiasLayer
    v2_act: ActivationLayer
    v3_mul: MatMulLayer
    v3_bias: MatBiasLayer
    sv3_mul: MatMulLayer
    sv3_bias: MatBiasLayer
    ownership_conv: ConvLayer


@dataclass(frozen=True)
class PostProcessParams:
    """Everything post-processing needs from the file header (spec §1.2, §4).

    For v<13 the multipliers are KataGo's fixed defaults. Serialisable with ``to_dict`` /
    ``from_dict`` so converted models (ONNX, TFLite, TensorRT) can carry them as metadata.
    """

    model_version: int
    policy_channels: int
    td_score_multiplier: float = 20.0
    score_mean_multiplier: float = 20.0
    score_stdev_multiplier: float = 20.0
    lead_multiplier: float = 20.0
    variance_time_multiplier: float = 40.0
    shortterm_value_error_multiplier: float = 0.25
    shortterm_score_error_multiplier: float = 30.0

    @property
    def multipliers(self) -> tuple[float, ...]:
        """The seven header multipliers in file order."""
        return (
            self.td_score_multiplier,
            self.score_mean_multiplier,
            self.score_stdev_multiplier,
            self.lead_multiplier,
            self.variance_time_multiplier,
            self.shortterm_value_error_multiplier,
            self.shortterm_score_error_multiplier,
        )

    def to_dict(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, float | int]) -> PostProcessParams:
        return cls(
            model_version=int(data["model_version"]),
            policy_channels=int(data["policy_channels"]),
            **{k: float(v) for k, v in data.items() if k not in ("model_version", "policy_channels")},
        )


DEFAULT_MULTIPLIERS = PostProcessParams(model_version=0, policy_channels=1).multipliers


@dataclass(frozen=True, eq=False)
class Network:
    """A whole KataGo network (header, trunk, policy head, value head).

    ``header_ints`` holds the eight v15+ header integers (empty before v15): slot 0 is
    ``meta_encoder_version``, slot 1 ``prefer_pass_alive_under_suicide``, the rest reserved.
    ``source`` is where it was read from (for messages; not part of the weights).
    """

    name: str
    version: int
    num_input_channels: int
    num_input_global_channels: int
    postprocess: PostProcessParams
    header_ints: tuple[int, ...]
    trunk: Trunk
    policy_head: PolicyHead
    value_head: ValueHead
    source: str = field(default="", compare=False)

    @property
    def meta_encoder_version(self) -> int:
        return self.header_ints[0] if self.header_ints else 0

    @property
    def prefer_pass_alive_under_suicide(self) -> bool:
        return bool(self.header_ints[1]) if len(self.header_ints) > 1 else False

    @property
    def policy_channels(self) -> int:
        return self.policy_head.out_channels

    @property
    def score_channels(self) -> int:
        return self.value_head.sv3_mul.out_channels

    @property
    def trunk_channels(self) -> int:
        return self.trunk.trunk_channels

    @property
    def has_transformer(self) -> bool:
        return any(isinstance(b, AttentionBlock | FFNBlock) for b in iter_blocks(self.trunk.blocks))

    def arrays(self) -> Iterator[tuple[str, F32]]:
        """Every weight array with a dotted ``record.field`` label, in file order."""
        yield from _arrays_of(self.trunk)
        yield from _arrays_of(self.policy_head)
        yield from _arrays_of(self.value_head)

    @property
    def num_parameters(self) -> int:
        return sum(int(a.size) for _, a in self.arrays())


def iter_blocks(blocks: tuple[Block, ...]) -> Iterator[Block]:
    """Depth-first walk over blocks, including those nested inside bottleneck blocks."""
    for block in blocks:
        yield block
        if isinstance(block, NestedBottleneckBlock):
            yield from iter_blocks(block.blocks)


def _arrays_of(obj: object) -> Iterator[tuple[str, F32]]:
    fields = getattr(obj, "__dataclass_fields__", None)
    if fields is None:
        return
    for fname in fields:
        value = getattr(obj, fname)
        if isinstance(value, np.ndarray):
            yield f"{getattr(obj, 'name', '?')}.{fname}", value
        elif isinstance(value, tuple):
            for item in value:
                yield from _arrays_of(item)
        elif hasattr(value, "__dataclass_fields__") and not isinstance(value, PostProcessParams):
            yield from _arrays_of(value)
