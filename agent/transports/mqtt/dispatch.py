"""Request dispatch for the MQTT transport: idempotency, a bounded queue, a concurrency limit,
expiry, timeouts, and routing every response of a query back to the requester that asked. No paho.

Flow of one request (see :mod:`agent.transports.mqtt.handlers` for decoding)::

    on_message ─► decode ─► duplicate? (ack with the original) ─► action? (run now, own queries only)
                                        ─► queue full? (busy reply) ─► queue ─► worker:
                   expired? (error reply) ─► handle_query(query, emit) ─► wait for its final(s)
                                                                          └► timeout: terminate + error

Every request ends with exactly one terminal reply (its last final response, or an error), and
only once that reply has been published is the request acknowledged to the broker (``ack``, the
MQTT PUBACK): a daemon killed before that leaves the request in its broker session, which hands it
to the next incarnation. ``PublishReply(reply, response, then)`` calls ``then`` once the broker
has the reply; the transport sets the MQTT 5 Receive Maximum to ``max_concurrent + max_queue``, so
a broker that honours it never hands over more requests than this dispatcher runs and queues.
Mosquitto 2.0.11 does not quite (measured: each PUBACK releases Receive Maximum further
messages), so requests beyond ``max_concurrent + max_queue`` are still held, unacknowledged, up to
``max_backlog_bytes`` of payload; only beyond that is a request refused as ``busy``.

Waiting requests are served round robin over requesters (reply topics), so one requester's flood
delays another's request by at most one request per requester in turn, among the requests the
agent holds (the broker's own session queue, beyond that, is first in, first out).

The analysis service may answer synchronously or from its own threads; a worker counts the
request as running until its final responses arrived (one per distinct analysed turn, or an
error), or until ``request_timeout_s`` passed: then the search is terminated and the requester
gets an error. So ``max_concurrent`` really bounds the searches this transport has in flight.

Query ids are scoped per requester: two clients may both send ``"id": "a"``. The id handed to the
service is rewritten to an unguessable internal one and mapped back in every response, so a
``terminate`` (or ``terminate_all``) from one client only reaches that client's own queries.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agent.engines.base import Emit
from agent.errors import AgentError, EngineBusy, QueryError
from agent.transports.mqtt.handlers import (
    Ack,
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

HandleQuery = Callable[[dict[str, Any], Emit], None]
PublishReply = Callable[[ReplyTo, Response, "Ack | None"], None]
"""``(reply, response, then)``: publish one response; call ``then`` once the broker has it.
``then`` is given for every final response and error (never dropped), None for partial results."""

INTERNAL_PREFIX = "mqtt-"
COUNTERS = (
    "received",  # request messages seen
    "accepted",  # decoded and queued (or run, for actions)
    "answered",  # requests whose terminal response was sent (last final, or an error)
    "replies",  # every response message handed to the transport (partials and errors included)
    "busy",  # rejected because the queue was full
    "expired",  # Message Expiry Interval passed while queued
    "duplicates",  # redelivered copies not analysed again
    "malformed",  # not UTF-8, not JSON, not an object, no string id
    "oversize",  # over the payload size limit
    "no_reply_topic",  # nowhere to reply: dropped
    "timeouts",  # no final response within request_timeout_s: terminated, error reply
    "internal_errors",  # the analysis service raised
    "aborted",  # still queued when the transport stopped
    "error_replies",  # responses carrying "error" (any cause, service field errors included)
    "acked",  # requests acknowledged to the broker (after their terminal reply was published)
)


def _keep() -> None:
    """``then`` of a final response that is not the request's last: deliver, acknowledge nothing."""


def _ack_all(acks: list[Ack]) -> Ack | None:
    if not acks:
        return None
    if len(acks) == 1:
        return acks[0]

    def ack() -> None:
        for one in acks:
            one()

    return ack


class _FairQueue:
    """Waiting jobs, one FIFO per requester (reply topic), served round robin: a requester that
    queued thousands of requests delays another's by at most one request per turn."""

    def __init__(self) -> None:
        self._by_requester: dict[str, deque[_Job]] = {}  # insertion order = round-robin order
        self._bytes: dict[str, int] = {}  # payload bytes waiting, per requester

    def __len__(self) -> int:
        return sum(len(q) for q in self._by_requester.values())

    def __bool__(self) -> bool:
        return bool(self._by_requester)

    def __iter__(self) -> Iterator[_Job]:
        for jobs in list(self._by_requester.values()):
            yield from list(jobs)

    def bytes_of(self, requester: str) -> int:
        return self._bytes.get(requester, 0)

    def append(self, job: _Job) -> None:
        topic = job.request.reply.topic
        self._by_requester.setdefault(topic, deque()).append(job)
        self._bytes[topic] = self._bytes.get(topic, 0) + job.request.size

    def popleft(self) -> _Job:
        topic, jobs = next(iter(self._by_requester.items()))
        job = jobs.popleft()
        del self._by_requester[topic]
        if jobs:
            self._by_requester[topic] = jobs  # to the back of the round
        self._forget(topic, job)
        return job

    def remove(self, job: _Job) -> None:
        topic = job.request.reply.topic
        jobs = self._by_requester[topic]
        jobs.remove(job)
        if not jobs:
            del self._by_requester[topic]
        self._forget(topic, job)

    def _forget(self, topic: str, job: _Job) -> None:
        left = self._bytes.get(topic, 0) - job.request.size
        if left > 0 and topic in self._by_requester:
            self._bytes[topic] = left
        else:
            self._bytes.pop(topic, None)

    def clear(self) -> None:
        self._by_requester.clear()
        self._bytes.clear()


@dataclass
class _Job:
    request: Request
    internal_id: str
    remaining: int
    acks: list[Ack] = field(default_factory=list)
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
        max_backlog_bytes: int = 8 << 20,
        max_requester_share: float = 0.75,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handle_query = handle_query
        self._publish = publish_reply
        self._max_concurrent = max(1, max_concurrent)
        self._max_queue = max(0, max_queue)
        self._max_payload = max_payload_bytes
        self._max_backlog_bytes = max_backlog_bytes
        self._max_requester_bytes = int(max_backlog_bytes * max_requester_share)
        self._queued_bytes = 0
        self._timeout = request_timeout_s
        self._clock = clock
        self._reply_check = reply_check
        self._recent = RecentKeys(dedup_capacity, dedup_ttl_s)
        self._cond = threading.Condition()
        self._queue = _FairQueue()
        self._running: dict[str, _Job] = {}
        self._unfinished: dict[Hashable, _Job] = {}  # dedup key -> job not yet answered
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._stopping = False
        self._stop_deadline = float("inf")
        self._workers: list[threading.Thread] = []

    @property
    def capacity(self) -> int:
        """Requests this dispatcher holds at once (running + queued): the MQTT Receive Maximum."""
        return self._max_concurrent + self._max_queue

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
            self._queued_bytes = 0
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
            out["queued_bytes"] = self._queued_bytes
        return out

    # -- receiving (paho's network thread: must not block) ---------------------------------------
    def on_message(self, msg: Incoming) -> None:
        decoded: Request | Rejection | None = decode_request(msg, self._max_payload, self._reply_check)
        with self._cond:
            self._counts["received"] += 1
            if isinstance(decoded, Rejection):
                self._counts[decoded.counter] += 1
            elif decoded is not None and self._recent.check_and_add(decoded.dedup_key, self._clock()):
                self._counts["duplicates"] += 1
                original = self._unfinished.get(decoded.dedup_key)
                if original is not None and msg.ack is not None:
                    original.acks.append(msg.ack)  # acknowledged with the original's answer
                    return
                decoded = None
        if decoded is None:
            logger.debug("duplicate request on %r: not analysed again", msg.topic)
            self._acknowledge(msg.ack)
        elif isinstance(decoded, Rejection):
            logger.debug(
                "rejected request on %r (%s): %r", msg.topic, decoded.counter, decoded.error["error"]
            )
            if decoded.reply is None:
                self._acknowledge(msg.ack)
            else:
                self._reply(decoded.reply, decoded.error, self._acked(msg.ack))
        else:
            self._accept(decoded, msg.ack)

    def _accept(self, request: Request, ack: Ack | None) -> None:
        query = request.query
        internal = f"{INTERNAL_PREFIX}{secrets.token_hex(12)}:{request.query_id}"
        job = _Job(request, internal, finals_expected(query), [ack] if ack is not None else [])
        if "action" in query:
            with self._cond:
                self._counts["accepted"] += 1
                self._unfinished[request.dedup_key] = job
                scoped, dropped = self._scope_action(request, query)
            for waiting in dropped:
                self._emit(
                    waiting, error_response("terminated before analysis started", waiting.request.query_id)
                )
            self._run(job, query, scoped)
            return
        with self._cond:
            if self._stopping:
                reason = "agent is stopping"
            elif (
                len(self._queue) + len(self._running) >= self.capacity
                and self._queued_bytes + request.size > self._max_backlog_bytes
            ):
                reason = (
                    f"busy: {len(self._running)} requests running and {len(self._queue)} queued "
                    f"({self._queued_bytes} bytes; limits {self._max_concurrent}, {self._max_queue} and "
                    f"{self._max_backlog_bytes} bytes); retry later"
                )
            elif (
                len(self._queue) + len(self._running) >= self.capacity
                and self._queue.bytes_of(request.reply.topic) + request.size > self._max_requester_bytes
            ):
                reason = (
                    f"busy: this requester has {self._queue.bytes_of(request.reply.topic)} bytes of "
                    f"requests waiting (limit {self._max_requester_bytes}, max_requester_share of "
                    "max_backlog_bytes; the rest is kept for other requesters); retry later"
                )
            else:
                self._counts["accepted"] += 1
                self._unfinished[request.dedup_key] = job
                self._queued_bytes += request.size
                self._queue.append(job)
                self._cond.notify()
                return
            self._counts["busy"] += 1
            self._recent.discard(request.dedup_key)  # a retry of a refused request is welcome
        self._reply(request.reply, error_response(reason, request.query_id), self._acked(ack))

    def _scope_action(self, request: Request, query: dict[str, Any]) -> tuple[list[str] | None, list[_Job]]:
        """Point ``terminate`` / ``terminate_all`` at this requester's own queries only; take its
        waiting ones out of the queue. A ``terminateId`` naming nobody's query of this requester
        (another requester's internal id included) reaches nothing.

        Called with the lock held; returns the requester's running queries to terminate (None: not
        a terminate action, run it as it is) and the dropped queued jobs."""
        action = query.get("action")
        if action not in ("terminate", "terminate_all"):
            return None, []
        topic = request.reply.topic
        target = query.get("terminateId") if action == "terminate" else None
        if action == "terminate" and not isinstance(target, str):
            return None, []  # the service answers with its field error

        def mine(job: _Job) -> bool:
            return job.request.reply.topic == topic and (target is None or job.request.query_id == target)

        dropped = [j for j in self._queue if mine(j)]
        for job in dropped:
            self._queue.remove(job)
            self._queued_bytes -= job.request.size
        own = [internal for internal, job in self._running.items() if mine(job)]
        return own, dropped

    # -- running ----------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                job = self._queue.popleft()
                self._queued_bytes -= job.request.size
                self._running[job.internal_id] = job
            try:
                if job.request.expired(self._clock()):
                    with self._cond:
                        self._counts["expired"] += 1
                    self._emit(
                        job, error_response("request expired before analysis started", job.request.query_id)
                    )
                elif job.remaining == 0:  # "analyzeTurns": [] - KataGo would answer nothing at all
                    self._emit(
                        job,
                        error_response(
                            "no turns to analyze (empty array)", job.request.query_id, "analyzeTurns"
                        ),
                    )
                else:
                    self._run(job, job.request.query)
                    self._wait(job)
            finally:
                with self._cond:
                    self._running.pop(job.internal_id, None)

    def _run(self, job: _Job, query: dict[str, Any], scoped: list[str] | None = None) -> None:
        def emit(response: Response) -> None:
            self._emit(job, response)

        try:
            if scoped is not None:
                self._run_scoped(job, query, scoped)
            else:
                self._handle_query({**query, "id": job.internal_id}, emit)
        except (QueryError, EngineBusy) as exc:
            field_name = exc.field if isinstance(exc, QueryError) else None
            self._emit(job, error_response(str(exc), job.request.query_id, field_name))
        except AgentError as exc:
            self._emit(job, error_response(str(exc), job.request.query_id))
        except Exception as exc:  # the transport must survive any service bug; the cause is logged
            logger.exception("analysis service failed on request %r", job.request.query_id)
            with self._cond:
                self._counts["internal_errors"] += 1
            self._emit(job, error_response(f"internal error: {type(exc).__name__}", job.request.query_id))

    def _run_scoped(self, job: _Job, query: dict[str, Any], internal_ids: list[str]) -> None:
        """``terminate`` / ``terminate_all`` limited to the requester's own running queries: one
        ``terminate`` per query for the service, one echo (KataGo's shape) for the requester."""
        plain = dict(query)
        turns = {"turnNumbers": plain["turnNumbers"]} if "turnNumbers" in plain else {}
        errors: list[Response] = []
        for internal in internal_ids:
            self._handle_query(
                {"id": job.internal_id, "action": "terminate", "terminateId": internal, **turns},
                lambda response: errors.append(response) if "error" in response else None,
            )
        if errors:
            self._emit(job, {**errors[0], "id": job.internal_id})
            return
        if not internal_ids:  # still let the service validate the action's fields
            probe: list[Response] = []
            self._handle_query(
                {**plain, "id": job.internal_id, "action": "terminate", "terminateId": job.internal_id},
                probe.append,
            )
            bad = [r for r in probe if "error" in r]
            if bad:
                self._emit(job, {**bad[0], "id": job.internal_id})
                return
        self._emit(job, {**plain, "id": job.internal_id})

    def _wait(self, job: _Job) -> None:
        deadline = self._clock() + self._timeout
        while not job.done.wait(0.2):
            now = self._clock()
            if now > deadline or now > self._stop_deadline:
                self._time_out(job, now > deadline)
                return

    def _time_out(self, job: _Job, by_timeout: bool) -> None:
        """Stop the search (it would hold a worker and the engine forever) and tell the requester."""
        with self._cond:
            self._counts["timeouts"] += 1
        limit = self._timeout if by_timeout else 0.0
        logger.warning(
            "request %r: no final response after %.0f s; terminating its search", job.request.query_id, limit
        )
        message = (
            f"request timed out after {self._timeout:g} s (request_timeout_s); search terminated"
            if by_timeout
            else "agent is stopping; search terminated"
        )
        # The error first: the engine's own final for the terminated search is then dropped.
        self._emit(job, error_response(message, job.request.query_id))
        terminate = {
            "id": job.internal_id + "#timeout",
            "action": "terminate",
            "terminateId": job.internal_id,
        }
        try:
            self._handle_query(terminate, lambda _response: None)
        except Exception:  # the error reply is sent; a failing terminate is logged, not fatal
            logger.exception("terminating timed-out request %r failed", job.request.query_id)

    def _emit(self, job: _Job, response: Response) -> None:
        out = dict(response)
        if out.get("id") == job.internal_id:
            out["id"] = job.request.query_id
        terminal = is_terminal(job.request.query, out)
        # A final of one turn among several must reach the requester too: never dropped (a
        # ``then`` marks it), though only the last one acknowledges the request.
        then: Ack | None = _keep if terminal is not None else None
        with self._cond:
            if job.done.is_set():
                return  # after a timeout's error reply: nothing more for this request
            if terminal is not None:
                job.remaining = 0 if terminal else job.remaining - 1
                if job.remaining <= 0:
                    job.done.set()
                    self._counts["answered"] += 1
                    self._unfinished.pop(job.request.dedup_key, None)
                    then = self._acked(_ack_all(job.acks))
                    job.acks = []
        self._reply(job.request.reply, out, then)

    # -- replying ---------------------------------------------------------------------------------
    def _reply(self, reply: ReplyTo, response: Response, then: Ack | None) -> None:
        with self._cond:
            self._counts["replies"] += 1
            if "error" in response:
                self._counts["error_replies"] += 1
        self._publish(reply, response, then)

    def _acked(self, ack: Ack | None) -> Ack:
        """``ack`` wrapped to count; always a callable, so the transport knows the reply is terminal."""

        def done() -> None:
            with self._cond:
                self._counts["acked"] += 1
            if ack is not None:
                ack()

        return done

    def _acknowledge(self, ack: Ack | None) -> None:
        self._acked(ack)()
