"""The ``Engine`` interface: something that answers KataGo analysis queries.

Two implementations: the native engine (our MCTS over an in-process ``NeuralNet``) and the KataGo
engine (a supervised ``katago analysis`` child). The ``AnalysisService`` in ``agent.protocol``
validates queries once for every transport and hands parsed queries to an engine.

Responses are plain ``dict`` objects shaped exactly like KataGo's JSON responses; an engine calls
``emit(response)`` for every partial and final response of a query, from any thread. Every
analysed (id, turn) gets exactly one final response (``isDuringSearch: false``), also on
terminate or failure (then an error object naming the cause).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

Response = dict[str, Any]
Emit = Callable[[Response], None]


class Engine(ABC):
    @abstractmethod
    def submit(self, query: dict[str, Any], emit: Emit) -> None:
        """Queue one validated analysis query; responses arrive through ``emit``."""

    @abstractmethod
    def terminate(self, query_id: str, turn_numbers: list[int] | None = None) -> None:
        """Stop analysing ``query_id`` (some turns or all); final responses still arrive."""

    @abstractmethod
    def terminate_all(self) -> None: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Version, models and state for ``query_version`` / ``query_models`` and health."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counters for health: queries served/failed, queue depth, visits/s, evals/s, latency."""

    @abstractmethod
    def close(self, timeout: float = 10.0) -> None:
        """Finish or terminate in-flight work (final responses emitted), then release resources."""
