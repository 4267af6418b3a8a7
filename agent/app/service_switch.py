"""The analysis service as the transports see it: swappable on SIGHUP, guarded by the thermal state.

Every transport holds one :class:`ServiceSwitch`. A reload that builds a new engine only changes
``current``; queries already running on the old engine finish there.

The thermal guard (``agent.app.thermal``) is applied here, once for all transports, before a query
reaches the engine: above the profile's hard limit new analysis queries get a KataGo-shaped
error (``{"id", "error"}``) until the device cools; above the soft limit ``maxVisits`` is capped
at the guard's reduced visit cap. Actions (``terminate``, ``query_version``...) always pass, so a
client can still stop work on a hot device. The profile's ``max_visits`` holds in every state: a
larger ``maxVisits`` is clamped with a warning (``{"id", "field": "maxVisits", "warning"}``).
A line is decoded once, with the protocol's size and nesting limits in every thermal state
(``agent.protocol.decode``), and the decoded query goes on to the service.

One action is the daemon's own: ``{"id": ..., "action": "query_health"}`` answers with the
daemon's health document (``{"id", "action": "query_health", "health": {...}}``), what
``katago-edge status`` asks over the local socket.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from agent.app.thermal import ThermalGuard
from agent.engines.base import Emit, Response
from agent.errors import EngineError, UndecodableRequest
from agent.protocol.decode import decode

logger = logging.getLogger(__name__)

SELF_TEST = {
    "id": "katago-edge-self-test",
    "moves": [["B", "D4"]],
    "rules": "tromp-taylor",
    "komi": 7.5,
    "boardXSize": 9,
    "boardYSize": 9,
    "maxVisits": 2,
}


class Service(Protocol):
    """What the switch delegates to (``agent.protocol.service.AnalysisService``)."""

    def handle_query(self, query: Any, emit: Emit) -> None: ...


class ServiceSwitch:
    """Delegates to ``current`` (an ``AnalysisService``); applies the thermal guard if set."""

    def __init__(
        self,
        service: Service,
        guard: ThermalGuard | None = None,
        health: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.current = service
        self.guard = guard
        self.health = health
        self.refused = 0
        self.capped = 0

    def _state(self) -> str:
        if self.guard is None:
            return "normal"
        return str(self.guard.status.state)

    def handle_line(self, line: str | bytes, emit: Emit) -> None:
        """One line: decoded once (limits hold in every state), then ``handle_query``."""
        if not line.strip():
            return
        try:
            query = decode(line)
        except UndecodableRequest as exc:
            emit({"error": str(exc)})
            return
        self.handle_query(query, emit)

    def handle_query(self, query: Any, emit: Emit) -> None:
        if self.health is not None and isinstance(query, dict) and query.get("action") == "query_health":
            emit({"id": query.get("id"), "action": "query_health", "health": self.health()})
            return
        if self.guard is None or not isinstance(query, dict) or "action" in query:
            self.current.handle_query(query, emit)
            return
        hot = self._state() not in ("normal", "unknown")
        status = self.guard.status
        if hot and status.refusing:
            self.refused += 1
            emit({"id": query.get("id"), "error": f"device too hot, not analysing: {status.message}"})
            return
        self.current.handle_query(self._cap(query, emit, hot), emit)

    def _cap(self, query: dict[str, Any], emit: Emit, hot: bool) -> dict[str, Any]:
        """The profile's ``max_visits`` always holds (the guard's reduced cap while hot): a larger
        ``maxVisits`` (top level or in ``overrideSettings``) is clamped, with a KataGo-style
        warning ``{"id", "field": "maxVisits", "warning"}``; the query still runs."""
        assert self.guard is not None
        _threads, cap = self.guard.limits()
        override = query.get("overrideSettings")
        asked = query.get("maxVisits")  # the top-level field wins over overrideSettings (as KataGo)
        if "maxVisits" not in query and isinstance(override, dict):
            asked = override.get("maxVisits")
        over = isinstance(asked, int | float) and not isinstance(asked, bool) and asked > cap
        if over and isinstance(query.get("id"), str):
            why = "the device is warm" if hot else "this device's profile limit (max_visits)"
            emit({"id": query["id"], "field": "maxVisits", "warning": f"Clamped to {cap} visits: {why}"})
        if over or (hot and not isinstance(query.get("maxVisits"), int)):
            self.capped += 1
            return {**query, "maxVisits": cap}
        return query


class ProgressWatch:
    """Decides whether the engine is alive enough to deserve a watchdog ping.

    A native engine with searches running must evaluate NN rows (``nn_rows`` grows); if it does
    not for ``stall_s`` seconds, it is wedged (a hung accelerator, a deadlock) and the daemon
    stops pinging, so systemd restarts the service. Idle engines, and engines that supervise
    their own child (the KataGo engine kills hung children itself), are always alive.
    """

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self._rows: int | None = None
        self._since = 0.0

    def alive(self, stats: dict[str, Any], now: float) -> bool:
        rows, running = stats.get("nn_rows"), stats.get("running")
        if not isinstance(rows, int) or not running:
            self._rows, self._since = rows if isinstance(rows, int) else None, now
            return True
        if rows != self._rows:
            self._rows, self._since = rows, now
            return True
        return now - self._since < self.stall_s


def self_test(service: Service, timeout: float) -> float:
    """Send one tiny query; return the seconds it took. ``EngineError`` unless it is answered."""
    done = threading.Event()
    result: dict[str, Any] = {}

    def emit(response: Response) -> None:
        if "error" in response or response.get("isDuringSearch") is False:
            result.update(response)
            done.set()

    start = time.monotonic()
    service.handle_query(dict(SELF_TEST), emit)
    if not done.wait(timeout):
        raise EngineError(f"the engine did not answer a 2-visit test query within {timeout:.0f} s")
    if "error" in result:
        raise EngineError(f"the engine failed its test query: {result['error']}")
    return time.monotonic() - start
