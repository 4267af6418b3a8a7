"""``AnalysisService``: the KataGo analysis protocol in front of any ``Engine``, for every transport.

One road for every message: a transport hands over the raw line or payload (``handle_line``) or,
when it had to look inside first (the local sessions, MQTT), the value ``agent.protocol.decode``
decoded once (``handle_query``); nothing is parsed twice. The service then

1. answers an undecodable line with a general ``{"error": ...}`` exactly as ``katago analysis``
   does (``decode``: UTF-8, one JSON value, size and nesting bounded);
2. answers the actions ``query_version``, ``query_models``, ``clear_cache``, ``terminate`` and
   ``terminate_all`` synchronously (the echo of the action object plus its extra fields);
3. validates an analysis query (``agent.protocol.query``) and replays its moves once
   (``agent.protocol.replay``), emits field errors / warnings synchronously, and hands the engine
   one ``AnalysisQuery``: the replayed positions the engine searches, and ``render``
   (``agent.protocol.response``), with which the engine's threads emit the responses later.

It never raises on bad input. ``emit`` may be called from several threads; transports must make
it thread-safe (one line per call).

Warnings: the native engine gets its warnings (unknown fields, ``overrideSettings`` keys,
unsupported rules) from this service. An engine that reports its own warnings (a real KataGo
child: ``Engine.reports_own_warnings``) gets none added, to avoid duplicates.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

from agent import __version__
from agent.engines.base import AnalysisQuery, Emit, Engine
from agent.errors import AgentError, QueryError, UndecodableRequest
from agent.protocol.decode import MAX_REQUEST_BYTES, decode, not_an_object
from agent.protocol.query import int_list, parse_query
from agent.protocol.replay import build_turns
from agent.protocol.response import analysis_response
from agent.search.params import SearchParams

logger = logging.getLogger(__name__)

ACTION_ERROR = "'action' field must be 'query_version' or 'query_models' or 'clear_cache' or 'terminate' or 'terminate_all'"
TURNS_ERROR = "If provided, must be an array of integers indicating turns to terminate"
KATAGO_COMPAT_VERSION = "1.17.2"


def analysis_query(q: dict[str, Any], defaults: SearchParams, **options: Any) -> AnalysisQuery:
    """Validate, replay and package one query for an engine, as the service does (warnings are
    dropped); ``QueryError`` for a bad field or an illegal move. ``options``: ``parse_query``'s."""
    request = parse_query(q, defaults, **options)
    turns, _ = build_turns(request)
    return AnalysisQuery(q, request, tuple(turns), functools.partial(analysis_response, request))


class AnalysisService:
    """Parses, validates and dispatches KataGo analysis-protocol messages to one engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        default_params: SearchParams | None = None,
        default_pv_len: int = 15,
        warn_unused_fields: bool = True,
        emit_warnings: bool | None = None,
        max_line_bytes: int = MAX_REQUEST_BYTES,
        version: str = KATAGO_COMPAT_VERSION,
    ) -> None:
        self.engine = engine
        self.default_params = default_params or engine.default_params
        self.default_pv_len = default_pv_len
        self.warn_unused_fields = warn_unused_fields
        if emit_warnings is None:
            emit_warnings = not engine.reports_own_warnings
        self.emit_warnings = emit_warnings
        self.max_line_bytes = max_line_bytes
        self.version = version
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(("lines", "queries", "actions", "errors", "warnings"), 0)
        self._started = time.monotonic()

    # ----------------------------------------------------------------------- entry points
    def handle_line(self, line: str | bytes, emit: Emit) -> None:
        """One line of input (trailing newline optional). Blank lines are ignored."""
        self._count("lines")
        if not line.strip():
            return
        try:
            query = decode(line, self.max_line_bytes)
        except UndecodableRequest as exc:
            self._error(emit, str(exc))
            return
        self.handle_query(query, emit)

    def handle_query(self, query: Any, emit: Emit) -> None:
        """An already-decoded JSON value (MQTT payloads, tests)."""
        try:
            self._dispatch(query, emit)
        except Exception:
            logger.exception("internal error while handling a query")
            self._error(emit, "Internal error while handling request")

    def close(self, timeout: float = 10.0) -> None:
        """Let the engine finish (or terminate) in-flight work; final responses are emitted."""
        self.engine.close(timeout)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self._counters)
        out["uptime_s"] = round(time.monotonic() - self._started, 3)
        try:
            out["engine"] = self.engine.stats()
        except AgentError as exc:
            out["engine"] = {"error": str(exc)}
        return out

    # ---------------------------------------------------------------------- internals
    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counters[key] += n

    def _error(self, emit: Emit, message: str) -> None:
        self._count("errors")
        logger.info("request error: %s", message)
        emit({"error": message})

    def _field_error(self, emit: Emit, qid: str, field: str | None, message: str) -> None:
        self._count("errors")
        logger.info("request %s error on %s: %s", qid, field, message)
        emit({"id": qid, "field": field or "", "error": message})

    def _warning(self, emit: Emit, qid: str, field: str, message: str) -> None:
        self._count("warnings")
        emit({"id": qid, "field": field, "warning": message})

    def _dispatch(self, q: Any, emit: Emit) -> None:
        if not isinstance(q, dict):
            self._error(emit, not_an_object(q))
            return
        if not isinstance(q.get("id"), str):
            self._error(emit, 'Request must have a string "id" field')
            return
        if "action" in q and isinstance(q["action"], str):
            self._count("actions")
            self._action(q, emit)
            return
        self._count("queries")
        qid = q["id"]
        try:
            request = parse_query(
                q,
                self.default_params,
                default_pv_len=self.default_pv_len,
                warn_unused=self.warn_unused_fields,
            )
        except QueryError as exc:
            self._field_error(emit, qid, exc.field, str(exc))
            return
        try:
            turns, rules_warnings = build_turns(request)
        except QueryError as exc:
            if self.emit_warnings:
                for field, msg in request.warnings:
                    self._warning(emit, qid, field, msg)
            self._field_error(emit, qid, exc.field, str(exc))
            return
        if self.emit_warnings:
            for field, msg in (*rules_warnings, *request.warnings):
                self._warning(emit, qid, field, msg)
        query = AnalysisQuery(q, request, tuple(turns), functools.partial(analysis_response, request))
        try:
            self.engine.submit(query, emit)
        except AgentError as exc:  # busy, shutting down, thermal limit: the query is not queued
            self._count("errors")
            logger.warning("query %s refused: %s", qid, exc)
            emit({"id": qid, "error": str(exc)})

    def _action(self, q: dict[str, Any], emit: Emit) -> None:
        action = q["action"]
        qid = q["id"]
        if action == "query_version":
            desc = self.engine.describe()  # a KataGo child reports its own version
            emit(
                {
                    **q,
                    "version": desc.get("version") or self.version,
                    "git_hash": desc.get("git_hash") or f"katago-edge {__version__}",
                }
            )
        elif action == "query_models":
            models = self.engine.describe().get("models", [])
            emit({**q, "models": models})
        elif action == "clear_cache":
            self.engine.clear_cache()
            emit(dict(q))
        elif action in ("terminate", "terminate_all"):
            turns: list[int] | None = None
            if "turnNumbers" in q:
                turns = int_list(q["turnNumbers"])
                if turns is None:
                    self._field_error(emit, qid, "turnNumbers", TURNS_ERROR)
                    return
            if action == "terminate":
                tid = q.get("terminateId")
                if not isinstance(tid, str):
                    self._field_error(
                        emit,
                        qid,
                        "terminateId",
                        'Requests for a terminate action must have a string "terminateId" field',
                    )
                    return
                self.engine.terminate(tid, turns)
            else:
                self.engine.terminate_all(turns)
            emit(dict(q))
        else:
            self._error(emit, ACTION_ERROR)
