"""The analysis service as the transports see it: swappable on SIGHUP, guarded by the thermal state.

Every transport holds one :class:`ServiceSwitch`. A reload that builds a new engine only changes
``current``; queries already running on the old engine finish there.

The thermal guard (``agent.thermal``) is applied here, once for all transports, before a query
reaches the engine: above the profile's hard limit new analysis queries get a KataGo-shaped
error (``{"id", "error"}``) until the device cools; above the soft limit ``maxVisits`` is capped
at the guard's reduced visit cap. Actions (``terminate``, ``query_version``...) always pass, so a
client can still stop work on a hot device. In the normal state lines pass through untouched
(nothing is parsed twice).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from agent.errors import EngineError
from agent.transports.session import Response

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


class ServiceSwitch:
    """Delegates to ``current`` (an ``AnalysisService``); applies the thermal guard if set."""

    def __init__(self, service: Any, guard: Any = None) -> None:
        self.current = service
        self.guard = guard
        self.refused = 0
        self.capped = 0

    def _state(self) -> str:
        if self.guard is None:
            return "normal"
        return str(self.guard.status.state)

    def handle_line(self, line: str, emit: Any) -> None:
        if self._state() in ("normal", "unknown"):
            self.current.handle_line(line, emit)
            return
        try:
            query = json.loads(line)
        except (ValueError, RecursionError):
            self.current.handle_line(line, emit)  # the service answers with KataGo's error
            return
        self.handle_query(query, emit)

    def handle_query(self, query: Any, emit: Any) -> None:
        state = self._state()
        if state in ("normal", "unknown") or not isinstance(query, dict) or "action" in query:
            self.current.handle_query(query, emit)
            return
        status = self.guard.status
        if status.refusing:
            self.refused += 1
            emit({"id": query.get("id"), "error": f"device too hot, not analysing: {status.message}"})
            return
        _threads, cap = self.guard.limits()
        visits = query.get("maxVisits")
        if not isinstance(visits, int) or isinstance(visits, bool) or visits > cap:
            query = {**query, "maxVisits": cap}
            self.capped += 1
        self.current.handle_query(query, emit)


class ProgressWatch:
    """Decides whether the engine is alive enough to deserve a watchdog ping.

    A native engine with searches running must evaluate NN rows (``nn_rows`` grows); if it does
    not for ``stall_s`` seconds, it is wedged (a hung accelerator, a deadlock) and the daemon
    stops pinging, so systemd restarts the service. Idle engines, and engines that supervise
    their own child (the KataGo engine kills hung children itself), are always alive.
    """

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self._rows: Any = None
        self._since = 0.0

    def alive(self, stats: dict[str, Any], now: float) -> bool:
        rows, running = stats.get("nn_rows"), stats.get("running")
        if not isinstance(rows, int) or not running:
            self._rows, self._since = rows, now
            return True
        if rows != self._rows:
            self._rows, self._since = rows, now
            return True
        return now - self._since < self.stall_s


def self_test(service: Any, timeout: float) -> float:
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
