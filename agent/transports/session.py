"""What the local transports (Unix socket, WebSocket) share: a client session and a loop thread.

A :class:`ClientSession` is one connected client. It decodes each of the client's lines once
(``agent.protocol.decode``: size, UTF-8 and nesting bounded), hands the decoded query to the
``AnalysisService`` (``handle_query``) and sends every response back as one JSON text. Two clients may both use the
id ``QUERY:1`` (KaTrain numbers its queries from 1 for every engine it starts), while the engine
sees one id space. So the session gives each query an internal id (a tag unique to the connection,
a sequence number, the client's id) and maps it back in the responses.

Fairness and bounds: a client has at most ``max_inflight`` queries in the engine at once; its
further queries wait in the session (in order) and enter the engine as earlier ones finish, so
one client queuing thousands of searches delays another client's query by at most
``max_inflight`` searches per busy client (round robin through the engine's FIFO). A client with
``max_queries`` queries not yet answered gets an error for the next one.

Scope: ``terminate`` and ``terminate_all`` reach only the client's own queries (``terminate_all``
from one KaTrain window must not stop another's). When a client goes away, its queries are
terminated, so a closed KaTrain window does not keep a Pi busy.

Input must be UTF-8 JSON: an undecodable line gets KataGo's parse error and is not analysed.

A :class:`LoopThread` runs one asyncio event loop in a named thread. Engines emit responses from
their own threads, and ``call_soon_threadsafe`` hands each response to the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from agent.engines.base import Emit, Response
from agent.errors import UndecodableRequest
from agent.protocol.decode import decode
from agent.protocol.query import finals_expected, int_list
from agent.protocol.service import TURNS_ERROR

logger = logging.getLogger(__name__)

SHUTTING_DOWN = "katago-edge is shutting down; not taking new queries"
MAX_INFLIGHT = 4
MAX_QUERIES = 1000


class QueryService(Protocol):
    """The part of ``agent.protocol.service.AnalysisService`` the local transports use: a query
    the session decoded once goes to ``handle_query``; a line the session cannot route (not
    JSON, not an object, no string id) goes to ``handle_line``, which writes KataGo's error."""

    def handle_query(self, query: Any, emit: Emit) -> None: ...

    def handle_line(self, line: str, emit: Emit) -> None: ...


@dataclass
class _Query:
    client_id: str
    remaining: int  # final responses still to come
    query: dict[str, Any]  # as handed to the service (internal id)
    submitted: bool = False


class ClientSession:
    """One client connection: id namespacing, fairness, own-query terminate, terminate on close."""

    def __init__(
        self,
        service: QueryService,
        send: Callable[[str], None],
        name: str,
        *,
        max_inflight: int = MAX_INFLIGHT,
        max_queries: int = MAX_QUERIES,
    ) -> None:
        self._service = service
        self._send = send
        self.name = name
        self.tag = f"{name}#{secrets.token_hex(8)}:"
        self._max_inflight = max(1, max_inflight)
        self._max_queries = max(1, max_queries)
        self._queries: dict[str, _Query] = {}  # internal id -> query not yet fully answered
        self._held: deque[str] = deque()  # internal ids waiting for an engine slot, in order
        self._inflight = 0
        self._seq = 0
        self._lock = threading.Lock()
        self.accepting = True
        self.closed = False

    @property
    def pending(self) -> int:
        """Final responses still to come (held queries included)."""
        with self._lock:
            return sum(q.remaining for q in self._queries.values())

    def feed_raw(self, raw: bytes) -> None:
        """One line as bytes: invalid UTF-8 gets KataGo's parse error, never a replaced text."""
        self.feed_line(raw)

    def feed_line(self, line: str | bytes) -> None:
        """Handle one protocol line from the client (blank lines are ignored, like KataGo)."""
        if not line.strip():
            return
        try:
            query = decode(line)
        except UndecodableRequest as exc:
            if exc.kind == "utf8":  # never a replaced text, not even in the error path
                self._deliver(json.dumps({"error": str(exc)}))
                return
            query = None
        if not isinstance(query, dict) or not isinstance(query.get("id"), str):
            text = line.decode("utf-8") if isinstance(line, bytes) else line
            self._service.handle_line(text, self._emit)  # the service writes KataGo's error
            return
        if not self.accepting:
            self._deliver(json.dumps({"id": query["id"], "error": SHUTTING_DOWN}))
            return
        client_id = query["id"]
        if query.get("action") in ("terminate", "terminate_all"):
            self._terminate(query)
            return
        with self._lock:
            self._seq += 1
            internal = f"{self.tag}{self._seq}:{client_id}"
        query["id"] = internal
        finals = finals_expected(query)
        if "action" in query or finals == 0:  # "analyzeTurns": [] is answered by nothing, as KataGo
            self._service.handle_query(query, self._emit)
            return
        with self._lock:
            if len(self._queries) >= self._max_queries:
                refused = True
            else:
                refused = False
                self._queries[internal] = _Query(client_id, finals, query)
                self._held.append(internal)
        if refused:
            self._deliver(
                json.dumps(
                    {
                        "id": client_id,
                        "error": f"too many queries from this connection ({self._max_queries} not yet "
                        "answered); wait for answers before sending more",
                    }
                )
            )
            return
        self._release()

    def _release(self) -> None:
        """Hand held queries to the engine while this client has a free slot."""
        while True:
            with self._lock:
                if self._inflight >= self._max_inflight or not self._held or self.closed:
                    return
                internal = self._held.popleft()
                query = self._queries.get(internal)
                if query is None:
                    continue
                query.submitted = True
                self._inflight += 1
                held = query.query
            self._service.handle_query(held, self._emit)

    def _terminate(self, query: dict[str, Any]) -> None:
        """``terminate`` / ``terminate_all`` of this client's own queries only; KataGo's echo."""
        action = query["action"]
        target = query.get("terminateId")
        if action == "terminate" and not isinstance(target, str):
            message = 'Requests for a terminate action must have a string "terminateId" field'
            self._deliver(json.dumps({"id": query["id"], "field": "terminateId", "error": message}))
            return
        if "turnNumbers" in query and int_list(query["turnNumbers"]) is None:
            self._deliver(json.dumps({"id": query["id"], "field": "turnNumbers", "error": TURNS_ERROR}))
            return
        with self._lock:
            own = [i for i, q in self._queries.items() if target is None or q.client_id == target]
            late: list[dict[str, Any]] = []  # held ones enter the engine, to end there (exact turns)
            for internal in own:
                entry = self._queries[internal]
                if not entry.submitted:
                    entry.submitted = True
                    self._inflight += 1
                    late.append(entry.query)
            if late:
                gone = set(own)
                self._held = deque(i for i in self._held if i not in gone)
        for held in late:
            self._service.handle_query(held, self._emit)
        turns = {"turnNumbers": query["turnNumbers"]} if "turnNumbers" in query else {}
        for internal in own:
            stop = {"id": self.tag + "terminate", "action": "terminate", "terminateId": internal, **turns}
            self._service.handle_query(stop, lambda _response: None)
        self._deliver(json.dumps(query, separators=(",", ":")))

    def _emit(self, response: Response | str | bytes) -> None:
        parsed: Any = response
        if isinstance(response, str | bytes):
            try:
                parsed = json.loads(response)
            except ValueError:
                self._deliver(
                    response.decode("utf-8", "replace") if isinstance(response, bytes) else response
                )
                return
        if not isinstance(parsed, dict):
            self._deliver(json.dumps(parsed))
            return
        out = dict(parsed)
        internal = out.get("id")
        finished = False
        if isinstance(internal, str) and internal.startswith(self.tag):
            out["id"] = internal[len(self.tag) :].split(":", 1)[-1]
            is_final = "error" in out or out.get("isDuringSearch") is False
            if is_final and "action" not in out:
                with self._lock:
                    entry = self._queries.get(internal)
                    if entry is not None:
                        entry.remaining -= 1
                        if "error" in out or entry.remaining <= 0:
                            del self._queries[internal]
                            if entry.submitted:
                                self._inflight -= 1
                            finished = True
        self._deliver(json.dumps(out, separators=(",", ":")))
        if finished:
            self._release()

    def _deliver(self, text: str) -> None:
        if self.closed:
            return
        try:
            self._send(text)
        except Exception as exc:  # the client vanished; nothing else to do with its response
            logger.debug("%s: dropping response: %s", self.name, exc)

    def close(self) -> None:
        """The client disconnected: terminate what it left running, drop held and later responses."""
        self.closed = True
        with self._lock:
            running = sorted(i for i, q in self._queries.items() if q.submitted)
            dropped = len(self._queries) - len(running)
            self._queries.clear()
            self._held.clear()
            self._inflight = 0
        for internal in running:
            terminate = {"id": self.tag + "closed", "action": "terminate", "terminateId": internal}
            self._service.handle_query(terminate, lambda _response: None)
        if running or dropped:
            logger.info(
                "%s closed; terminated %d running queries, dropped %d waiting",
                self.name,
                len(running),
                dropped,
            )


class LocalTransport(ABC):
    """A local transport (Unix socket, WebSocket) as the daemon drives it: ``start``, then
    ``stop_accepting`` and ``close`` at shutdown, ``clients`` / ``pending`` for status and health.
    What they share is here too: their open sessions, a new one per client."""

    _service: QueryService
    _sessions: set[ClientSession]

    def _open_session(self, name: str) -> tuple[ClientSession, asyncio.Queue[str | None]]:
        """A session for a client that just connected (call on the loop), and the queue of its
        responses: engines answer from their own threads, and the loop sends them in order."""
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[str | None] = asyncio.Queue()

        def send(text: str) -> None:
            loop.call_soon_threadsafe(out.put_nowait, text)

        session = ClientSession(self._service, send, name)
        self._sessions.add(session)
        return session, out

    def _refuse_queries(self) -> None:
        """Every open session answers new queries with an error (``SHUTTING_DOWN``)."""
        for session in list(self._sessions):
            session.accepting = False

    @abstractmethod
    def start(self) -> None:
        """Listen; raises ``TransportError`` when the endpoint cannot be opened."""

    @abstractmethod
    def stop_accepting(self) -> None:
        """No new connections or queries; responses to running queries still go out."""

    @abstractmethod
    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, send what is queued (within ``timeout``) and close every connection."""

    @property
    def clients(self) -> int:
        """Connected clients."""
        return len(self._sessions)

    @property
    def pending(self) -> int:
        """Queries of those clients not answered yet."""
        return sum(s.pending for s in list(self._sessions))


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
