"""Helpers for the KataGo tests: fast settings, a collecting ``emit``, query builders."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from agent.engines.katago_binary import KataGoSettings


def fast_settings(tmp: Path, **kw: Any) -> KataGoSettings:
    """Small, fast settings for PoCL on two cores; ``kw`` overrides any field."""
    base: dict[str, Any] = {
        "cache_dir": tmp,
        "opencl_tuning": "generic",
        "num_analysis_threads": 2,
        "nn_max_batch_size": 4,
        "nn_cache_size_power_of_two": 12,
        "nn_mutex_pool_size_power_of_two": 8,
        "start_timeout_s": 120.0,
        "restart_backoff_s": 0.1,
    }
    base.update(kw)
    return KataGoSettings(**base)


class Collector:
    """A thread-safe ``emit`` that keeps every response and can wait for final ones."""

    def __init__(self) -> None:
        self.responses: list[dict[str, Any]] = []
        self._cond = threading.Condition()

    def __call__(self, resp: dict[str, Any]) -> None:
        json.dumps(resp)  # every response must be serialisable as a KataGo line
        with self._cond:
            self.responses.append(resp)
            self._cond.notify_all()

    def finals(self, qid: str | None = None) -> list[dict[str, Any]]:
        """Responses that close a query turn: final analysis, noResults, or an error."""
        with self._cond:
            return [
                r
                for r in self.responses
                if (qid is None or r.get("id") == qid)
                and ("error" in r or ("warning" not in r and r.get("isDuringSearch") is False))
            ]

    def wait(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def wait_finals(self, ids: list[str], timeout: float) -> bool:
        return self.wait(lambda: all(self._count(i) >= 1 for i in ids), timeout)

    def _count(self, qid: str) -> int:
        return sum(
            1
            for r in self.responses
            if r.get("id") == qid
            and ("error" in r or ("warning" not in r and r.get("isDuringSearch") is False))
        )


def query_9x9(qid: str, moves: list[tuple[str, str]], visits: int = 8, **extra: Any) -> dict[str, Any]:
    return {
        "id": qid,
        "moves": [list(m) for m in moves],
        "rules": "tromp-taylor",
        "komi": 7.5,
        "boardXSize": 9,
        "boardYSize": 9,
        "maxVisits": visits,
        **extra,
    }
