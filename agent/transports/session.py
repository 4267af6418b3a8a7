"""What the local transports (Unix socket, WebSocket) share: a client session and a loop thread.

A :class:`ClientSession` is one connected client. It feeds the client's lines to the
``AnalysisService`` and sends every response back as one JSON text. Two clients may both use the
id ``QUERY:1`` (KaTrain numbers its queries from 1 for every engine it starts), while the engine
sees one id space. So the session prefixes each query id (and each ``terminateId``) with a tag
unique to the connection, and strips the tag from the responses. When a client goes away, the
queries it left running are terminated, so a closed KaTrain window does not keep a Pi busy.

A :class:`LoopThread` runs one asyncio event loop in a named thread. Engines emit responses from
their own threads, and ``call_soon_threadsafe`` hands each response to the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

logger = logging.getLogger(__name__)

Response = dict[str, Any]
SHUTTING_DOWN = "katago-edge is shutting down; not taking new queries"


class LineService(Protocol):
    """The part of ``agent.protocol.service.AnalysisService`` the transports use."""

    def handle_line(self, line: str, emit: Callable[[Response], None]) -> None: ...


class ClientSession:
    """One client connection: id namespacing, pending-query tracking, terminate on close."""

    def __init__(self, service: LineService, send: Callable[[str], None], name: str) -> None:
        self._service = service
        self._send = send
        self.name = name
        self.tag = f"{name}#{secrets.token_hex(4)}:"
        self._pending: dict[str, int] = {}  # client id -> final responses still to come
        self._lock = threading.Lock()
        self.accepting = True
        self.closed = False

    @property
    def pending(self) -> int:
        with self._lock:
            return sum(self._pending.values())

    def feed_line(self, line: str) -> None:
        """Handle one protocol line from the client (blank lines are ignored, like KataGo)."""
        if not line.strip():
            return
        try:
            query = json.loads(line)
        except (ValueError, RecursionError):
            query = None
        if not isinstance(query, dict) or not isinstance(query.get("id"), str):
            self._service.handle_line(line, self._emit)  # the service writes KataGo's error
            return
        if not self.accepting:
            self._send(json.dumps({"id": query["id"], "error": SHUTTING_DOWN}))
            return
        client_id = query["id"]
        query["id"] = self.tag + client_id
        if isinstance(query.get("terminateId"), str):
            query["terminateId"] = self.tag + query["terminateId"]
        if "action" not in query:
            turns = query.get("analyzeTurns")
            finals = len(turns) if isinstance(turns, list) and turns else 1  # one final per turn
            with self._lock:
                self._pending[client_id] = self._pending.get(client_id, 0) + finals
        self._service.handle_line(json.dumps(query), self._emit)

    def _emit(self, response: Response | str) -> None:
        parsed: Any = response
        if isinstance(response, str):
            try:
                parsed = json.loads(response)
            except ValueError:
                self._deliver(response)
                return
        if not isinstance(parsed, dict):
            self._deliver(json.dumps(parsed))
            return
        out = dict(parsed)
        for key in ("id", "terminateId"):
            value = out.get(key)
            if isinstance(value, str) and value.startswith(self.tag):
                out[key] = value[len(self.tag) :]
        is_final = "error" in out or out.get("isDuringSearch") is False
        if is_final and isinstance(out.get("id"), str) and "action" not in out:
            with self._lock:
                left = self._pending.get(out["id"], 0) - 1
                if "error" in out or left <= 0:
                    self._pending.pop(out["id"], None)
                else:
                    self._pending[out["id"]] = left
        self._deliver(json.dumps(out, separators=(",", ":")))

    def _deliver(self, text: str) -> None:
        if self.closed:
            return
        try:
            self._send(text)
        except Exception as exc:  # the client vanished; nothing else to do with its response
            logger.debug("%s: dropping response: %s", self.name, exc)

    def close(self) -> None:
        """The client disconnected: terminate what it left running, drop later responses."""
        self.closed = True
        with self._lock:
            leftovers = sorted(self._pending)  # ids only
            self._pending.clear()
        for client_id in leftovers:
            terminate = {
                "id": self.tag + "closed",
                "action": "terminate",
                "terminateId": self.tag + client_id,
            }
            self._service.handle_line(json.dumps(terminate), lambda _response: None)
        if leftovers:
            logger.info("%s closed; terminated %d running queries", self.name, len(leftovers))


class LoopThread:
    """An asyncio event loop running in its own named daemon thread."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError(f"{self._name} loop not started")
        return self._loop

    @property
    def running(self) -> bool:
        return self._loop is not None and self._loop.is_running()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def start(self) -> None:
        """Create the loop (only now, so an unused transport leaves no unclosed loop) and run it."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float | None = 30.0) -> Any:
        """Run ``coro`` on the loop and wait for its result from another thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is None or self._thread is None or self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
