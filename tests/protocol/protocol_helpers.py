"""Helpers for protocol tests: a native engine over the deterministic fake network."""

from __future__ import annotations

import threading
from typing import Any

from agent.backends.fake import FakeNet
from agent.engines.native import NativeEngine
from agent.search.params import SearchParams


class Collector:
    """A thread-safe ``emit`` that records every response."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, response: dict[str, Any]) -> None:
        with self._lock:
            self.items.append(response)

    def by_id(self, qid: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.items if r.get("id") == qid]

    def finals(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.items if r.get("isDuringSearch") is False]


def make_engine(max_visits: int = 20, **kw: Any) -> NativeEngine:
    return NativeEngine(
        FakeNet(),
        default_params=SearchParams(max_visits=max_visits),
        randomize=False,
        seed=7,
        **kw,
    )
