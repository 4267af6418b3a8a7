"""One exception tree for katago-edge.

Lower-level errors (onnxruntime, subprocess, paho, OS, numpy) are caught at the boundary where
they happen and re-raised as one of these ``from exc``, so callers and the CLI handle a single
family::

    AgentError
    ├── ConfigError                 bad agent config / profile (TOML, pydantic), with positions
    ├── HardwareError               a probe could not read what it must read
    ├── NetworkFileError            a KataGo network file is corrupt, truncated or unsupported
    │   └── UnsupportedNetworkError a valid file using a feature or version we do not implement
    ├── ModelStoreError             fetching / storing networks (download, checksum, atomic write)
    ├── ConversionError             ONNX / TFLite / TensorRT conversion or quantization failed
    │   └── VerificationFailed      a converted network missed its accuracy thresholds
    ├── RuntimeUnavailable          an optional runtime is not installed (names the pip extra)
    ├── InferenceError              a runtime failed while evaluating
    ├── GameError                   Go rules and positions
    │   ├── IllegalMoveError        ``Illegal move N: LOC``
    │   ├── CoordinateError         an unparseable coordinate
    │   └── RulesError              unknown rules preset or bad rules object
    ├── SgfError                    an SGF file that cannot be read
    ├── QueryError                  an analysis query that fails validation (has ``field``)
    │   └── UndecodableRequest      bytes that are not one bounded JSON value (has ``kind``)
    ├── DeploymentError             a desired network refused, or a rollout step failed
    ├── EngineError                 the analysis engine cannot serve (stopped, failed, busy)
    │   ├── EngineBusy              queue full; retry later
    │   └── ThermalLimit            device above its hard thermal limit
    └── TransportError              MQTT / socket / WebSocket problems
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error raised on purpose by katago-edge."""


class ConfigError(AgentError):
    """An agent config or profile is invalid."""


class HardwareError(AgentError):
    """A hardware probe failed in a way that cannot be reported as 'absent'."""


class NetworkFileError(AgentError):
    """A KataGo network file is corrupt, truncated or of an unknown layout."""


class UnsupportedNetworkError(NetworkFileError):
    """A well-formed network that uses something this version does not support."""


class ModelStoreError(AgentError):
    """Fetching or storing a network failed."""


class ConversionError(AgentError):
    """Converting or quantizing a network failed."""


class VerificationFailed(ConversionError):
    """A converted network missed its accuracy thresholds."""


class RuntimeUnavailable(AgentError):
    """An optional runtime is not installed; the message names the pip extra."""


class InferenceError(AgentError):
    """A runtime failed while evaluating a batch."""


class EvaluationCancelled(InferenceError):
    """An evaluation was abandoned through its ``Cancel`` token (``NeuralNet.make_cancel``)."""


class GameError(AgentError):
    """A Go position or move is invalid."""


class IllegalMoveError(GameError):
    """A move is illegal under the rules in force."""


class CoordinateError(GameError):
    """A coordinate string could not be parsed or is off the board."""


class RulesError(GameError):
    """Unknown rules name or an invalid rules object."""


class SgfError(AgentError):
    """An SGF file could not be parsed."""


class QueryError(AgentError):
    """An analysis query failed validation; ``field`` names the offending key if any."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UndecodableRequest(QueryError):
    """A request is not one JSON value within the limits: ``kind`` is ``oversize`` (too many
    bytes), ``utf8`` (``detail`` says where), ``nesting`` or ``json``."""

    def __init__(self, message: str, kind: str, detail: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.detail = detail


class DeploymentError(AgentError):
    """A desired-state message is refused (no sha256, bad URL), or a deployment step failed
    (download, size limit, sha256, preparation): the network serving stays."""


class EngineError(AgentError):
    """The analysis engine cannot serve the request."""


class EngineBusy(EngineError):
    """The engine queue is full."""


class ThermalLimit(EngineError):
    """The device is above its hard thermal limit and refuses new work."""


class TransportError(AgentError):
    """A transport (MQTT, socket, WebSocket) failed."""
