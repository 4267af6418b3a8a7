"""``AnalysisService``: the KataGo analysis protocol in front of any ``Engine``, for every transport.

A transport hands over raw lines (stdin, a socket, a WebSocket frame) or decoded objects (MQTT)
and an ``emit`` callable. The service:

1. decodes the line (UTF-8, one JSON object; size and nesting bounded) and answers undecodable
   input with a general ``{"error": ...}`` exactly as ``katago analysis`` does;
2. answers the actions ``query_version``, ``query_models``, ``clear_cache``, ``terminate`` and
   ``terminate_all`` synchronously (the echo of the action object plus its extra fields);
3. validates analysis queries (``agent.protocol.query``), replays their moves for legality, emits
   field errors / warnings synchronously and hands valid queries to the engine, whose threads
   emit the analysis responses later.

It never raises on bad input. ``emit`` may be called from several threads; transports must make
it thread-safe (one line per call).

Warnings: the native engine gets its warnings (unknown fields, ``overrideSettings`` keys,
unsupported rules) from this service. An engine that reports its own warnings (a real KataGo
child) sets ``reports_own_warnings = True`` and the service stays quiet to avoid duplicates.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent import __version__
from agent.engines.base import Emit, Engine
from agent.errors import AgentError, QueryError
from agent.protocol.query import parse_query
from agent.search.params import SearchParams

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_NESTING = 64
ACTION_ERROR = "'action' field must be 'query_version' or 'query_models' or 'clear_cache' or 'terminate' or 'terminate_all'"
TURNS_ERROR = "If provided, must be an array of integers indicating turns to terminate"
KATAGO_COMPAT_VERSION = "1.17.2"


def _nesting_depth_exceeds(text: str, limit: int) -> bool:
    """Cheap pre-check so that deeply nested JSON never reaches the recursive decoder."""
    depth = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def _int_list(v: Any) -> list[int] | None:
    if not isinstance(v, list) or not all(isinstance(e, int) and not isinstance(e, bool) for e in v):
        return None
    return [int(e) for e in v]


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
        max_line_bytes: int = MAX_LINE_BYTES,
        version: str = KATAGO_COMPAT_VERSION,
    ) -> None:
        self.engine = engine
        self.default_params = default_params or getattr(engine, "default_params", None) or SearchParams()
        self.default_pv_len = default_pv_len
        self.warn_unused_fields = warn_unused_fields
        if emit_warnings is None:
            emit_warnings = not getattr(engine, "reports_own_warnings", False)
        self.emit_warnings = emit_warnings
        self.max_line_bytes = max_line_bytes
        self.version = version
        self._lock = threading.Lock()
        self._counters = {
            "lines": 0,
            "queries": 0,
            "actions": 0,
            "errors": 0,
            "warnings": 0,
        }
        self._started = time.monotonic()

    # ----------------------------------------------------------------------- entry points
    def handle_line(self, line: str | bytes, emit: Emit) -> None:
        """One line of input (trailing newline optional). Blank lines are ignored."""
        self._count("lines")
        try:
            if isinstance(line, bytes | bytearray):
                if len(line) > self.max_line_bytes:
                    self._error(
                        emit, f"Request line too long ({len(line)} bytes, limit {self.max_line_bytes})"
                    )
                    return
                try:
                    text = bytes(line).decode("utf-8")
                except UnicodeDecodeError as exc:
                    shown = bytes(line[:200]).decode("utf-8", "replace")
                    self._error(emit, f"{exc} - could not parse input line as json request: {shown}")
                    return
            else:
                text = line
            text = text.strip()
            if not text:
                return
            if len(text) > self.max_line_bytes:
                self._error(
                    emit, f"Request line too long ({len(text)} characters, limit {self.max_line_bytes})"
                )
                return
            if _nesting_depth_exceeds(text, MAX_NESTING):
                self._error(
                    emit,
                    f"[json.exception.parse_error] nesting deeper than {MAX_NESTING} levels"
                    f" - could not parse input line as json request: {text[:200]}",
                )
                return
            try:
                obj = json.loads(text, parse_constant=self._reject_constant)
            except (ValueError, RecursionError) as exc:
                self._error(
                    emit,
                    f"[json.exception.parse_error] {exc} - could not parse input line as json request: {text[:1000]}",
                )
                return
            self.handle_query(obj, emit)
        except Exception:  # the service must keep serving whatever one line does
            logger.exception("internal error while handling a request line")
            self._error(emit, "Internal error while handling request")

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
    @staticmethod
    def _reject_constant(name: str) -> Any:
        raise ValueError(f"invalid literal {name}")

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
            self._error(
                emit, "Request line was valid json but was not an object, ignoring: " + json.dumps(q)[:1000]
            )
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
        from agent.search.position import build_turns

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
        submit_request = getattr(self.engine, "submit_request", None)
        try:
            if submit_request is not None:
                submit_request(request, turns, emit)
            else:
                self.engine.submit(q, emit)
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
            clear: Callable[[], None] | None = getattr(self.engine, "clear_cache", None)
            if clear is not None:
                clear()
            emit(dict(q))
        elif action in ("terminate", "terminate_all"):
            turns: list[int] | None = None
            if "turnNumbers" in q:
                turns = _int_list(q["turnNumbers"])
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
            elif turns is None:
                self.engine.terminate_all()
            else:
                terminate_turns = getattr(self.engine, "terminate_all_turns", None)
                if terminate_turns is not None:
                    terminate_turns(turns)
                else:
                    self.engine.terminate_all()
            emit(dict(q))
        else:
            self._error(emit, ACTION_ERROR)
