"""Request dispatch for the MQTT transport: idempotency, a bounded queue, a concurrency limit,
expiry, and routing every response of a query back to the requester that asked. No paho here.

Flow of one request (see :mod:`agent.transports.mqtt_handlers` for decoding)::

    on_message ─► decode ─► duplicate? (drop, count) ─► action? (run now) ─► queue full? (busy reply)
                                                                           └► queue ─► worker:
                   expired? (error reply) ─► handle_query(query, emit) ─► wait for its final(s)

The analysis service may answer synchronously or from its own threads; a worker counts the
request as running until its final responses arrived (one per analysed turn, or an error), or
until ``request_timeout_s`` passed. So ``max_concurrent`` really bounds the searches this
transport has in flight, and ``max_queue`` bounds the memory held for waiting ones.

Query ids are scoped per requester: two clients may both send ``"id": "a"``. The id handed to the
service is rewritten to a unique internal one and mapped back in every response, so a
``terminate`` from one client can only reach that client's queries (``terminate_all`` is passed
through and affects the whole device, like on KataGo's stdin).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.errors import AgentError, EngineBusy, QueryError
from agent.transports.mqtt_handlers import (
    Incoming,
    RecentKeys,
    Rejection,
    ReplyCheck,
    ReplyTo,
    Request,
    Response,
    decode_request,
    error_response,
    finals_expected,
    is_terminal,
)

logger = logging.getLogger(__name__)

Emit = Callable[[Response], None]
HandleQuery = Callable[[dict[str, Any], Emit], None]
PublishReply = Callable[[ReplyTo, Response], None]

COUNTERS = (
    "received",  # request messages seen
    "accepted",  # decoded and queued (or run, for actions)
    "answered",  # requests whose final response was sent
    "replies",  # response messages handed to the transport (partials included)
    "busy",  # rejected because the queue was full
    "expired",  # Message Expiry Interval passed while queued
    "duplicates",  # redelivered copies not analysed again
    "malformed",  # not UTF-8, not JSON, not an object, no string id
    "oversize",  # over the payload size limit
    "no_reply_topic",  # nowhere to reply: dropped
    "timeouts",  # no final response within request_timeout_s
    "internal_errors",  # the analysis service raised
    "aborted",  # still queued when the transport stopped
    "error_replies",  # responses carrying "error" (any cause, service field errors included)
)


@dataclass
class _Job:
    request: Request
    internal_id: str
    remaining: int
    done: threading.Event = field(default_factory=threading.Event)


class RequestDispatcher:
    """Turns received MQTT requests into ``handle_query`` calls and responses into replies."""

    def __init__(
        self,
        handle_query: HandleQuery,
        publish_reply: PublishReply,
        *,
        max_concurrent: int = 1,
        max_queue: int = 16,
        max_payload_bytes: int = 65536,
        request_timeout_s: float = 600.0,
        dedup_capacity: int = 4096,
        dedup_ttl_s: float = 600.0,
        reply_check: ReplyCheck | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handle_query = handle_query
        self._publish = publish_reply
        self._max_concurrent = max(1, max_concurrent)
        self._max_queue = max(0, max_queue)
        self._max_payload = max_payload_bytes
        self._timeout = request_timeout_s
        self._clock = clock
        self._reply_check = reply_check
        self._recent = RecentKeys(dedup_capacity, dedup_ttl_s)
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._running: dict[str, _Job] = {}
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._ids = itertools.count(1)
        self._stopping = False
        self._stop_deadline = float("inf")
        self._workers: list[threading.Thread] = []

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        for i in range(self._max_concurrent):
            worker = threading.Thread(target=self._work, name=f"mqtt-worker-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self, timeout: float = 5.0) -> None:
        """Refuse new requests, answer queued ones with an error, wait for running ones."""
        with self._cond:
            self._stopping = True
            self._stop_deadline = self._clock() + timeout
            aborted = list(self._queue)
            self._queue.clear()
            self._counts["aborted"] += len(aborted)
            self._cond.notify_all()
        for job in aborted:
            self._emit(job, error_response("agent is stopping; request not analysed", job.request.query_id))
        for worker in self._workers:
            worker.join(timeout=max(0.1, timeout))
        self._workers.clear()

    def stats(self) -> dict[str, int]:
        with self._cond:
            out = dict(self._counts)
            out["queued"] = len(self._queue)
            out["running"] = len(self._running)
        return out

    # -- receiving (paho's network thread: must not block) ---------------------------------------
    def on_message(self, msg: Incoming) -> None:
        decoded = decode_request(msg, self._max_payload, self._reply_check)
        with self._cond:
            self._counts["received"] += 1
            if isinstance(decoded, Rejection):
                self._counts[decoded.counter] += 1
            elif self._recent.check_and_add(decoded.dedup_key, self._clock()):
                self._counts["duplicates"] += 1
                logger.debug("duplicate request %r on %s: not analysed again", decoded.query_id, msg.topic)
                return
        if isinstance(decoded, Rejection):
            logger.debug(
                "rejected request on %s (%s): %s", msg.topic, decoded.counter, decoded.error["error"]
            )
            if decoded.reply is not None:
                with self._cond:
                    self._counts["error_replies"] += 1
                self._publish(decoded.reply, decoded.error)
            return
        self._accept(decoded)

    def _accept(self, request: Request) -> None:
        query = request.query
        job = _Job(request, f"mqtt{next(self._ids)}:{request.query_id}", finals_expected(query))
        if "action" in query:
            with self._cond:
                self._counts["accepted"] += 1
                query, dropped = self._scope_action(request, query)
            for waiting in dropped:
                self._emit(
                    waiting, error_response("terminated before analysis started", waiting.request.query_id)
                )
            self._run(job, query)
            return
        with self._cond:
            if self._stopping:
                reason = "agent is stopping"
            elif len(self._queue) + len(self._running) >= self._max_queue + self._max_concurrent:
                reason = (
                    f"busy: {len(self._running)} requests running and {len(self._queue)} queued "
                    f"(limits {self._max_concurrent} and {self._max_queue}); retry later"
                )
            else:
                self._counts["accepted"] += 1
                self._queue.append(job)
                self._cond.notify()
                return
            self._counts["busy"] += 1
            self._counts["error_replies"] += 1
            self._recent.discard(request.dedup_key)  # a retry of a refused request is welcome
        self._publish(request.reply, error_response(reason, request.query_id))

    def _scope_action(self, request: Request, query: dict[str, Any]) -> tuple[dict[str, Any], list[_Job]]:
        """Point ``terminate`` at this requester's own query; take it out of the queue if waiting.

        Called with the lock held; returns the query to run and the dropped queued jobs."""
        if query.get("action") != "terminate" or not isinstance(query.get("terminateId"), str):
            return query, []
        target = query["terminateId"]
        topic = request.reply.topic
        dropped = [j for j in self._queue if j.request.reply.topic == topic and j.request.query_id == target]
        for job in dropped:
            self._queue.remove(job)
        for internal, job in self._running.items():
            if job.request.reply.topic == topic and job.request.query_id == target:
                return {**query, "terminateId": internal}, dropped
        return query, dropped

    # -- running ----------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                job = self._queue.popleft()
                self._running[job.internal_id] = job
            try:
                if job.request.expired(self._clock()):
                    with self._cond:
                        self._counts["expired"] += 1
                    self._emit(
                        job, error_response("request expired before analysis started", job.request.query_id)
                    )
                else:
                    self._run(job, job.request.query)
                    self._wait(job)
            finally:
                with self._cond:
                    self._running.pop(job.internal_id, None)

    def _run(self, job: _Job, query: dict[str, Any]) -> None:
        def emit(response: Response) -> None:
            self._emit(job, response)

        try:
            self._handle_query({**query, "id": job.internal_id}, emit)
        except (QueryError, EngineBusy) as exc:
            field_name = getattr(exc, "field", None)
            self._emit(job, error_response(str(exc), job.request.query_id, field_name))
        except AgentError as exc:
            self._emit(job, error_response(str(exc), job.request.query_id))
        except Exception as exc:  # the transport must survive any service bug; the cause is logged
            logger.exception("analysis service failed on request %r", job.request.query_id)
            with self._cond:
                self._counts["internal_errors"] += 1
            self._emit(job, error_response(f"internal error: {type(exc).__name__}", job.request.query_id))

    def _wait(self, job: _Job) -> None:
        deadline = self._clock() + self._timeout
        while not job.done.wait(0.2):
            now = self._clock()
            if now > deadline or now > self._stop_deadline:
                with self._cond:
                    self._counts["timeouts"] += 1
                logger.warning(
                    "request %r: no final response after %.0f s", job.request.query_id, self._timeout
                )
                return

    def _emit(self, job: _Job, response: Response) -> None:
        out = dict(response)
        if out.get("id") == job.internal_id:
            out["id"] = job.request.query_id
        terminate_id = out.get("terminateId")
        if isinstance(terminate_id, str) and terminate_id.startswith("mqtt") and ":" in terminate_id:
            out["terminateId"] = terminate_id.split(":", 1)[1]
        terminal = is_terminal(job.request.query, out)
        finished = False
        with self._cond:
            self._counts["replies"] += 1
            if "error" in out:
                self._counts["error_replies"] += 1
            if terminal is not None and not job.done.is_set():
                job.remaining = 0 if terminal else job.remaining - 1
                if job.remaining <= 0:
                    job.done.set()
                    self._counts["answered"] += 1
                    finished = True
        self._publish(job.request.reply, out)
        if finished:
            logger.debug("request %r answered", job.request.query_id)
