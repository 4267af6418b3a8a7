"""Positions, searches and engines over the deterministic fake network, for the search, protocol
and engine tests (import as ``from search_support import ...``)."""

from __future__ import annotations

import threading
from typing import Any

from agent.backends.fake import FakeNet
from agent.engines.native import NativeEngine
from agent.game.state import GameState
from agent.network.model import PostProcessParams
from agent.protocol.query import parse_query
from agent.protocol.replay import build_turns
from agent.search.evaluator import NNEvaluator
from agent.search.mcts import Search
from agent.search.params import SearchParams
from agent.search.position import SearchState

POST = PostProcessParams(model_version=15, policy_channels=2)


def query(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "t",
        "moves": [["B", "E5"], ["W", "C3"]],
        "rules": "chinese",
        "komi": 7.0,
        "boardXSize": 9,
        "boardYSize": 9,
    }
    base.update(kw)
    return base


def make_search(params: SearchParams | None = None, evaluator: NNEvaluator | None = None, **q: Any) -> Search:
    p = params or SearchParams(max_visits=40)
    req = parse_query(query(**q), p)
    turns, _ = build_turns(req)
    ev = evaluator or NNEvaluator(FakeNet(), POST, randomize=False)
    return Search(ev, req.params, SearchState(turns[-1][1]), track_ownership=True, seed=1)


class Sink:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, r: dict[str, Any]) -> None:
        with self.lock:
            self.items.append(r)


def engine(**kw: Any) -> NativeEngine:
    params = kw.pop("params", SearchParams(max_visits=30))
    return NativeEngine(FakeNet(), default_params=params, randomize=False, seed=5, **kw)


def state_after(
    moves: list[list[str]], size: int = 9, rules: str = "tromp-taylor", **fields: Any
) -> GameState:
    """The position after ``moves`` (``[["B", "E5"], ...]``), replayed as the protocol does."""
    q = {"id": "t", "moves": moves, "rules": rules, "komi": 7.5, "boardXSize": size, "boardYSize": size}
    turns, _ = build_turns(parse_query({**q, **fields}, SearchParams()))
    return turns[-1][1]


def search_state(moves: list[list[str]], size: int = 9, **fields: Any) -> SearchState:
    return SearchState(state_after(moves, size, **fields))
