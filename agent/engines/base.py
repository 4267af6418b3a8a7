"""The engine seam: what the ``AnalysisService`` hands an engine, and what it may call on one.

Two implementations: the native engine (our MCTS over an in-process ``NeuralNet``,
``agent.engines.native``) and the KataGo engine (a supervised ``katago analysis`` child,
``agent.engines.katago_process``). Everything the service calls is declared on ``Engine``, so an
engine that misses one is a type error, not a query that behaves differently.

The protocol validates a query's fields (``agent.protocol.query`` -> ``AnalysisRequest``),
replays its moves once (``agent.protocol.replay``) and hands the engine one ``AnalysisQuery``
with ``render``, the protocol's function that turns a search of one turn into KataGo's response
JSON (``agent.protocol.response``). The native engine searches the replayed states and calls
``render``; the KataGo engine forwards ``raw`` to its child. Neither parses or replays a query,
and neither builds analysis JSON.

Responses are plain ``dict`` objects shaped exactly like KataGo's JSON responses; an engine calls
``emit(response)`` for every partial and final response of a query, from any thread. Every
analysed (id, turn) gets exactly one final response (``isDuringSearch: false``), also on
terminate or failure (then an error object naming the cause).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from agent.game.rules import Rules
from agent.game.state import GameState
from agent.search.params import SearchParams

if TYPE_CHECKING:  # the KataGo engine never loads the search
    from agent.search.mcts import Search

XY = tuple[int, int]
Response = dict[str, Any]
"""One KataGo-shaped JSON object (a result, an error, a warning, an action's echo).

The one ``Response`` type of the project; transports and the service import it from here."""
Emit = Callable[[Response], None]
# (search of one turn, turn number, during search?) -> the response, or None before any result
Render = Callable[["Search", int, bool], "Response | None"]


@dataclass(frozen=True)
class AnalysisRequest:
    """A validated query: everything needed to analyse its turns. Colours are "B" / "W"."""

    id: str
    x_size: int
    y_size: int
    initial_stones: tuple[tuple[str, XY], ...]
    moves: tuple[tuple[str, XY | None], ...]
    initial_player: str | None
    rules: Rules
    analyze_turns: tuple[int, ...]
    priorities: dict[int, int]
    params: SearchParams
    analysis_pv_len: int = 15
    include_ownership: bool = False
    include_ownership_stdev: bool = False
    include_moves_ownership: bool = False
    include_moves_ownership_stdev: bool = False
    include_policy: bool = False
    include_pv_visits: bool = False
    include_no_result_value: bool = False
    report_every: float | None = None
    first_report_after: float | None = None
    # per colour: {xy or None(pass): untilDepth}; for allowMoves every other point is listed
    avoid: dict[str, dict[XY | None, int]] = field(default_factory=dict)
    warnings: tuple[tuple[str, str], ...] = ()  # (field, message)

    @property
    def perspective(self) -> str:
        return self.params.report_analysis_winrates_as


@dataclass(frozen=True)
class AnalysisQuery:
    """One validated analysis query: as sent (``raw``), as parsed (``request``), replayed
    (``turns``: the position before each analysed turn), and how to answer it (``render``)."""

    raw: dict[str, Any]
    request: AnalysisRequest
    turns: tuple[tuple[int, GameState], ...]
    render: Render

    @property
    def id(self) -> str:
        return self.request.id


class Engine(ABC):
    """Answers validated analysis queries. ``reports_own_warnings``: the engine emits KataGo's
    field warnings itself (a KataGo child does), so the service must not add its own."""

    reports_own_warnings: ClassVar[bool] = False

    @property
    @abstractmethod
    def default_params(self) -> SearchParams:
        """The search parameters a query starts from (its fields and ``overrideSettings`` apply
        on top)."""

    @abstractmethod
    def submit(self, query: AnalysisQuery, emit: Emit) -> None:
        """Queue one validated analysis query; responses arrive through ``emit``. Raises an
        ``EngineError`` (busy, shutting down) when the query is not queued."""

    @abstractmethod
    def terminate(self, query_id: str, turn_numbers: list[int] | None = None) -> None:
        """Stop analysing ``query_id`` (some turns or all); final responses still arrive."""

    @abstractmethod
    def terminate_all(self, turn_numbers: list[int] | None = None) -> None:
        """Stop every query (only the given turns of each, when ``turn_numbers`` is set)."""

    @abstractmethod
    def clear_cache(self) -> None:
        """Forget cached evaluations and kept trees (KataGo's ``clear_cache`` action)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Version, models and state for ``query_version`` / ``query_models`` and health."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counters for health: queries served/failed, queue depth, visits/s, evals/s, latency."""

    @abstractmethod
    def close(self, timeout: float = 10.0) -> None:
        """Finish or terminate in-flight work (final responses emitted), then release resources."""
