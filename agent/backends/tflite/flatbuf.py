"""A TFLite flatbuffer assembled tensor by tensor with LiteRT's generated schema (no TensorFlow).

``ai_edge_litert.schema_py_generated`` is the TFLite schema (``schema.fbs``) compiled to Python by
``flatc --python --gen-object-api``; it ships with ``ai-edge-litert``, which every TFLite device
installs anyway, and needs only ``flatbuffers``. :class:`ModelBuilder` keeps one subgraph: tensors
(an activation tensor has a static shape with batch 1 and a ``shape_signature`` with -1 in the batch
axis, which is what lets the interpreter resize the batch), constant buffers (16-byte aligned, the
alignment TensorFlow's converter uses, deduplicated by content), builtin operators, one signature
and named metadata buffers. :func:`read_model` and :func:`read_metadata` go the other way.

Operator versions follow the TFLite op-version table (``tensorflow/lite/tools/versioning``) for
the options used (:mod:`.ops` sets them): 1 everywhere except ``FULLY_CONNECTED`` with
``keep_num_dims`` or int8 (5), ``DEQUANTIZE`` of float16 (3) or int8 (2), ``QUANTIZE`` to int8
(2) and int8 ``CONV_2D`` (3). The kernels registered for an op cover all its versions; the
version tells an older runtime what the op needs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import ConversionError, RuntimeUnavailable

try:
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
except ImportError as exc:  # tflite-runtime alone runs models but has no schema module
    raise RuntimeUnavailable(
        "writing TFLite files needs ai-edge-litert (its TFLite schema) and flatbuffers: "
        "`pip install 'katago-edge[tflite]'`"
    ) from exc

BATCH = -1  # the dynamic batch axis in a shape
ALIGNMENT = 16
_DTYPES: dict[Any, int] = {
    np.dtype(np.float32): schema.TensorType.FLOAT32,
    np.dtype(np.float16): schema.TensorType.FLOAT16,
    np.dtype(np.int32): schema.TensorType.INT32,
    np.dtype(np.int8): schema.TensorType.INT8,
}
OP_NAMES: dict[int, str] = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


class _AlignedBuffer(schema.BufferT):
    """A constant buffer whose bytes start on a 16-byte boundary (the generated ``Pack`` aligns to
    the element size only, 1 for a byte vector)."""

    def __init__(self, payload: bytes) -> None:
        super().__init__()
        self.payload = payload

    def Pack(self, builder: flatbuffers.Builder) -> int:
        data = 0
        if self.payload:  # what Builder.CreateNumpyVector does, with the alignment asked for
            builder.StartVector(1, len(self.payload), ALIGNMENT)
            builder.head = builder.head - len(self.payload)
            builder.Bytes[builder.head : builder.head + len(self.payload)] = self.payload
            builder.vectorNumElems = len(self.payload)
            data = builder.EndVector()
        schema.BufferStart(builder)
        if self.payload:
            schema.BufferAddData(builder, data)
        return int(schema.BufferEnd(builder))


@dataclass(frozen=True)
class Tensor:
    """A tensor of the model under construction: its index and shape (``BATCH`` for the batch axis)."""

    index: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class Quant:
    """Quantization parameters of an int8 tensor (per tensor, or per channel along ``axis``)."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 0

    def to_schema(self) -> Any:
        q = schema.QuantizationParametersT()
        q.scale = np.asarray(self.scale, np.float32).ravel()
        q.zeroPoint = np.asarray(self.zero_point, np.int64).ravel()
        q.quantizedDimension = self.axis
        return q


class ModelBuilder:
    """Accumulates one subgraph; :meth:`finish` returns the serialized model."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.tensors: list[Any] = []
        self.shapes: list[tuple[int, ...]] = []
        self.buffers: list[Any] = [_AlignedBuffer(b"")]  # buffer 0: the empty sentinel
        self.operators: list[Any] = []
        self.opcodes: list[Any] = []
        self._opcode_index: dict[tuple[int, int], int] = {}
        self._constants: dict[tuple[bytes, str, tuple[int, ...]], Tensor] = {}
        self.metadata: list[tuple[str, bytes]] = []
        self.inputs: list[tuple[str, Tensor]] = []
        self.outputs: list[tuple[str, Tensor]] = []

    # -- tensors ------------------------------------------------------------------------------------
    def _add_tensor(
        self, name: str, shape: tuple[int, ...], dtype: np.dtype[Any], buffer: int, quant: Quant | None
    ) -> Tensor:
        t = schema.TensorT()
        t.name = name.encode()
        t.shape = np.array([1 if d == BATCH else d for d in shape], np.int32)
        if BATCH in shape:
            t.shapeSignature = np.array(shape, np.int32)
        t.type = _DTYPES[np.dtype(dtype)]
        t.buffer = buffer
        if quant is not None:
            t.quantization = quant.to_schema()
        self.tensors.append(t)
        return Tensor(len(self.tensors) - 1, tuple(shape), np.dtype(dtype))

    def activation(
        self, name: str, shape: tuple[int, ...], dtype: Any = np.float32, quant: Quant | None = None
    ) -> Tensor:
        """A tensor computed by an operator (no data)."""
        return self._add_tensor(name, tuple(int(d) for d in shape), np.dtype(dtype), 0, quant)

    def constant(self, name: str, value: np.ndarray, quant: Quant | None = None) -> Tensor:
        """A constant tensor; identical constants (same bytes, dtype and shape) are stored once."""
        arr = np.ascontiguousarray(value)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        elif arr.dtype == np.int64:
            arr = arr.astype(np.int32)
        payload = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        key = (hashlib.sha256(payload).digest(), arr.dtype.str, tuple(arr.shape))
        if quant is None and key in self._constants:
            return self._constants[key]
        self.buffers.append(_AlignedBuffer(payload))
        tensor = self._add_tensor(name, tuple(arr.shape), arr.dtype, len(self.buffers) - 1, quant)
        if quant is None:
            self._constants[key] = tensor
        return tensor

    def tensor(self, index: int) -> Tensor:
        """The tensor ``index`` added earlier."""
        t = self.tensors[index]
        shape = tuple(int(d) for d in (t.shapeSignature if t.shapeSignature is not None else t.shape))
        dtype = next(k for k, v in _DTYPES.items() if v == t.type)
        return Tensor(index, shape, np.dtype(dtype))

    def int32(self, name: str, values: list[int] | tuple[int, ...]) -> Tensor:
        return self.constant(name, np.asarray(values, np.int32))

    # -- operators ----------------------------------------------------------------------------------
    def opcode(self, builtin: int, version: int = 1) -> int:
        key = (builtin, version)
        if key not in self._opcode_index:
            code = schema.OperatorCodeT()
            code.builtinCode = builtin
            code.deprecatedBuiltinCode = min(builtin, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
            code.version = version
            self.opcodes.append(code)
            self._opcode_index[key] = len(self.opcodes) - 1
        return self._opcode_index[key]

    def op(
        self,
        builtin: int,
        inputs: list[Tensor | None],
        outputs: list[Tensor],
        options: Any = None,
        options_type: int = 0,
        version: int = 1,
    ) -> None:
        o = schema.OperatorT()
        o.opcodeIndex = self.opcode(builtin, version)
        o.inputs = [-1 if t is None else t.index for t in inputs]
        o.outputs = [t.index for t in outputs]
        if options is not None:
            o.builtinOptionsType = options_type
            o.builtinOptions = options
        self.operators.append(o)

    # -- model --------------------------------------------------------------------------------------
    def finish(self, signature: str = "serving_default") -> bytes:
        if not self.inputs or not self.outputs:
            raise ConversionError("TFLite writer: a model needs inputs and outputs")
        sub = schema.SubGraphT()
        sub.tensors = self.tensors
        sub.inputs = [t.index for _, t in self.inputs]
        sub.outputs = [t.index for _, t in self.outputs]
        sub.operators = self.operators
        sub.name = b"main"
        sig = schema.SignatureDefT()
        sig.signatureKey = signature.encode()
        sig.subgraphIndex = 0
        sig.inputs = [_tensor_map(name, t) for name, t in self.inputs]
        sig.outputs = [_tensor_map(name, t) for name, t in self.outputs]
        model = schema.ModelT()
        model.version = 3
        model.description = self.description.encode()
        model.operatorCodes = self.opcodes
        model.subgraphs = [sub]
        model.signatureDefs = [sig]
        buffers = list(self.buffers)
        entries = []
        for name, payload in self.metadata:
            buffers.append(_AlignedBuffer(payload))
            entry = schema.MetadataT()
            entry.name = name.encode()
            entry.buffer = len(buffers) - 1
            entries.append(entry)
        model.buffers = buffers
        model.metadata = entries or None
        size = sum(len(b.payload) + ALIGNMENT for b in buffers) + 1024 * (len(self.tensors) + 64)
        if size >= 2**31 - 1:
            raise ConversionError("TFLite writer: models over 2 GB are not supported")
        builder = flatbuffers.Builder(size)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _tensor_map(name: str, tensor: Tensor) -> Any:
    m = schema.TensorMapT()
    m.name = name.encode()
    m.tensorIndex = tensor.index
    return m


def read_model(data: bytes) -> Any:
    """The root ``Model`` table of a TFLite flatbuffer (lazy accessors; nothing unpacked)."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ConversionError("not a TFLite flatbuffer (no TFL3 identifier)")
    return schema.Model.GetRootAs(data, 0)


def read_metadata(path: Path, name: str) -> bytes | None:
    """The bytes of the model metadata entry ``name`` of the ``.tflite`` file at ``path``, or None."""
    return metadata_entry(path.read_bytes(), name)


def metadata_entry(data: bytes, name: str) -> bytes | None:
    """The bytes of the model metadata entry ``name`` of the flatbuffer ``data``, or None."""
    model = read_model(data)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == name.encode():
            return bytes(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return None


def operator_names(data: bytes) -> list[str]:
    """The operator of every node, in order: the builtin's name, or ``CUSTOM:<name>``."""
    model = read_model(data)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            codes.append("CUSTOM:" + (custom.decode() if custom else "?"))
        else:
            codes.append(OP_NAMES.get(builtin, f"UNKNOWN_{builtin}"))
    names: list[str] = []
    for s in range(model.SubgraphsLength()):
        sub = model.Subgraphs(s)
        names.extend(codes[sub.Operators(j).OpcodeIndex()] for j in range(sub.OperatorsLength()))
    return names
