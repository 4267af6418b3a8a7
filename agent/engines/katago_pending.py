"""The queries a KataGo child owes answers to: relabelling, routing, re-sending and failing them.

Every query is written to KataGo under an internal id (``k<n>``; internal actions ``a<n>``),
because clients of different transports may use the same id. ``PendingTable.route`` maps each
response back to the client's id and the ``emit`` of the query it answers. A query is finished
when every analysed turn got its final response (``isDuringSearch: false``, also ``noResults``
after a terminate) or when KataGo answered it with an error (a field error drops the query).

Each entry remembers the child generation it was written to (``sent_gen``; ``None`` = waiting for
a child), so a death moves exactly that child's queries back to waiting (once) and a late line
from a dead child is never delivered twice.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.engines.base import Emit, Response

Delivery = tuple[Emit, Response]


@dataclass(eq=False)
class Pending:
    """A query (or an internal action) written to a child and not yet fully answered."""

    key: str  # the id KataGo sees
    client_id: str  # the id the client used
    query: dict[str, Any]  # exactly what is (re)sent, with ``key`` as id
    emit: Emit | None
    turns: set[int]  # turns still owed a final response
    submitted: float
    action: str | None = None  # internal action: finished by its first response
    sent_gen: int | None = None  # child generation it was written to; None = waiting for a child
    resent: bool = False
    terminated_at: float | None = None
    result: dict[str, Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def prepare_resend(self) -> None:
        """Ask only for the turns still unanswered (and keep ``priorities`` aligned with them)."""
        q = self.query
        turns = q.get("analyzeTurns")
        if not isinstance(turns, list) or set(turns) == self.turns:
            return
        priorities = q.get("priorities")
        kept = sorted(self.turns)
        if isinstance(priorities, list) and len(priorities) == len(turns):
            by_turn = dict(zip(turns, priorities, strict=True))
            q["priorities"] = [by_turn[t] for t in kept]
        q["analyzeTurns"] = kept


class PendingTable:
    """Thread-safe table of everything in flight, keyed by the id KataGo sees."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, Pending] = {}
        self._ids = itertools.count(1)
        self.counters = collections.Counter[str]()
        self._latencies: collections.deque[float] = collections.deque(maxlen=500)

    # ---------------------------------------------------------------------------- registering
    def new_query(self, query: dict[str, Any], emit: Emit, gen: int | None) -> Pending:
        turns = query.get("analyzeTurns")
        turn_set = set(turns) if isinstance(turns, list) else {len(query.get("moves") or [])}
        with self._lock:
            key = f"k{next(self._ids)}"
            p = Pending(key, str(query.get("id")), dict(query, id=key), emit, turn_set, time.monotonic())
            p.sent_gen = gen
            self._items[key] = p
            self.counters["submitted"] += 1
        return p

    def new_action(self, action: str, gen: int, label: str | None = None, **extra: Any) -> Pending:
        """An internal action for child ``gen``; ``label`` names it in the table (e.g. ``ping``)."""
        with self._lock:
            key = f"a{next(self._ids)}"
            msg = {"id": key, "action": action, **extra}
            p = Pending(key, key, msg, None, set(), time.monotonic(), action=label or action, sent_gen=gen)
            self._items[key] = p
        return p

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    # ---------------------------------------------------------------------------- routing
    def route(self, gen: int, resp: dict[str, Any]) -> Delivery | None:
        """The delivery for one response of child ``gen`` (``None``: internal or nobody's)."""
        key = resp.get("id")
        with self._lock:
            p = self._items.get(key) if isinstance(key, str) else None
            if p is None or p.sent_gen != gen:
                return None
            if p.action:
                del self._items[p.key]
                p.result = resp
                p.done.set()
                return None
            finished = "error" in resp
            if not finished and "warning" not in resp and resp.get("isDuringSearch") is False:
                p.turns.discard(resp.get("turnNumber", -1))
                finished = not p.turns
            if finished:
                del self._items[p.key]
                self.counters["failed" if "error" in resp else "completed"] += 1
                self._latencies.append(time.monotonic() - p.submitted)
            resp["id"] = p.client_id
        return (p.emit, resp) if p.emit is not None else None

    # ---------------------------------------------------------------------------- child deaths
    def on_death(self, gen: int) -> list[Pending]:
        """Child ``gen`` died: its queries wait for the next child (once); returns those that died twice."""
        twice: list[Pending] = []
        with self._lock:
            for p in list(self._items.values()):
                if p.sent_gen != gen:
                    continue
                if p.action:
                    del self._items[p.key]
                    p.done.set()
                elif p.resent:
                    twice.append(p)
                else:
                    p.resent, p.sent_gen = True, None
                    p.prepare_resend()
                    self.counters["resent"] += 1
        return twice

    def assign_waiting(self, gen: int) -> list[Pending]:
        """The waiting queries, now owned by child ``gen``, in submission order."""
        with self._lock:
            waiting = [p for p in self._items.values() if p.sent_gen is None and not p.action]
            for p in waiting:
                p.sent_gen = gen
        return waiting

    def forget_actions(self, gen: int) -> None:
        """Drop the start-up actions of a child that never became current."""
        with self._lock:
            for p in [p for p in self._items.values() if p.sent_gen == gen and p.action]:
                del self._items[p.key]

    # ---------------------------------------------------------------------------- ending queries
    def fail(self, which: Callable[[Pending], bool], message: str) -> list[Delivery]:
        """Remove the matching entries; each query gets ``{"id", "error": message}``."""
        with self._lock:
            doomed = [p for p in self._items.values() if which(p)]
            for p in doomed:
                del self._items[p.key]
                p.done.set()
                if not p.action:
                    self.counters["failed"] += 1
        return [(p.emit, {"id": p.client_id, "error": message}) for p in doomed if p.emit is not None]

    def drop_waiting(self, turns: list[int] | None, only: Pending | None = None) -> list[Delivery]:
        """Terminate waiting (unsent) queries: ``noResults`` finals, as KataGo gives unstarted work."""
        out: list[Delivery] = []
        with self._lock:
            for p in list(self._items.values()):
                if p.action or p.sent_gen is not None or (only is not None and p is not only):
                    continue
                dropped = sorted(p.turns if turns is None else p.turns & set(turns))
                p.turns -= set(dropped)
                p.prepare_resend()
                if p.emit is not None:
                    final = {"isDuringSearch": False, "noResults": True}
                    out += [(p.emit, {"id": p.client_id, "turnNumber": t, **final}) for t in dropped]
                if not p.turns:
                    del self._items[p.key]
                    self.counters["completed"] += 1
        return out

    # ---------------------------------------------------------------------------- questions
    def queries_of(self, client_id: str) -> list[Pending]:
        with self._lock:
            return [p for p in self._items.values() if p.client_id == client_id and not p.action]

    def older_than(self, age_s: float) -> list[Pending]:
        now = time.monotonic()
        with self._lock:
            return [p for p in self._items.values() if not p.action and now - p.submitted > age_s]

    def busy(self, gen: int) -> bool:
        """Anything (also a ping) written to child ``gen`` and unanswered."""
        with self._lock:
            return any(p.sent_gen == gen for p in self._items.values())

    def pinging(self, gen: int) -> bool:
        with self._lock:
            return any(p.action == "ping" and p.sent_gen == gen for p in self._items.values())

    def queries(self) -> int:
        with self._lock:
            return sum(1 for p in self._items.values() if not p.action)

    def mean_latency_ms(self) -> float | None:
        with self._lock:
            lat = list(self._latencies)
        return round(1000 * sum(lat) / len(lat), 3) if lat else None
