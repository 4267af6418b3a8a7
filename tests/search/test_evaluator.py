"""The NN evaluator (``agent.search.evaluator``): symmetries, batching across searches, the cache."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from search_support import POST, make_search, query

from agent.backends.fake import FakeNet
from agent.protocol.query import parse_query
from agent.protocol.replay import build_turns
from agent.search.evaluator import REPROBE_EVERY, NNEvaluator
from agent.search.mcts import Search
from agent.search.params import SearchParams
from agent.search.position import SearchState


def test_evaluator__a_peeked_symmetry_is_the_next_draw_and_leaves_the_stream_unchanged() -> None:
    a = NNEvaluator(FakeNet(), POST, randomize=True, seed=5)
    b = NNEvaluator(FakeNet(), POST, randomize=True, seed=5)
    plain = [a.random_symmetry() for _ in range(6)] + a.sample_symmetries(3) + [a.random_symmetry()]
    peeked = [b.peek_symmetry(), b.peek_symmetry()]
    assert peeked[0] == peeked[1] == plain[0]
    got = [b.random_symmetry() for _ in range(6)]
    b.peek_symmetry()  # a peek undone by a multi-symmetry draw
    got += [*b.sample_symmetries(3), b.random_symmetry()]
    assert got == plain


def test_evaluator__server_thread_batches_concurrent_requests_and_ends_on_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Several submitters go through the server thread: each gets its own row's evaluation
    (equal to a direct evaluation of the same position), batches form, and close() ends it.
    The server waits for a full batch as long as it takes (its own wait is a wall-clock fraction
    of an evaluation, which the submitters' encoding may outlast on a loaded machine)."""
    net = FakeNet(delay=0.01)
    ev = NNEvaluator(net, POST, randomize=False, max_batch_size=4)
    monkeypatch.setattr(ev, "_fill_wait", lambda: 30.0)
    states = []
    for extra in (["D4"], ["E6"], ["C7"], ["G3"]):
        req = parse_query(query(moves=[["B", "E5"], ["W", "C3"], ["B", extra[0]]]), SearchParams())
        turns, _ = build_turns(req)
        states.append(SearchState(turns[-1][1]))
    params = SearchParams()
    direct = {}
    solo = NNEvaluator(FakeNet(), POST, randomize=False)
    for i, st in enumerate(states):
        search = Search(solo, params, st, seed=1)
        direct[i] = search._evaluate(st, False)
    results: dict[int, Any] = {}
    ev.add_submitters(len(states))
    barrier = threading.Barrier(len(states))

    def worker(i: int) -> None:
        search = Search(ev, params, states[i], seed=1)
        barrier.wait()
        results[i] = search._evaluate(states[i], False)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(states))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    ev.add_submitters(-len(states))
    assert sorted(results) == [0, 1, 2, 3]
    for i in results:
        assert np.array_equal(results[i].policy, direct[i].policy)
        assert results[i].white_win == direct[i].white_win
        assert np.array_equal(results[i].white_ownership, direct[i].white_ownership)
    stats = ev.stats()
    assert stats["nn_rows"] == 4 and stats["nn_batches"] == 1  # the four requests in one batch
    server = ev._server
    assert server is not None and server.is_alive()
    ev.close()
    server.join(5)
    assert not server.is_alive()


def test_mcts__nn_cache_hits_and_clear() -> None:
    ev = NNEvaluator(FakeNet(), POST, randomize=False)
    make_search(SearchParams(max_visits=1), ev).run()
    make_search(SearchParams(max_visits=1), ev).run()
    assert ev.cache_hits == 1
    ev.clear_cache()
    make_search(SearchParams(max_visits=1), ev).run()
    assert ev.cache_hits == 1 and ev.cache_misses == 2


def test_evaluator__judged_not_worth_waiting__still_waits_now_and_then_to_measure_again() -> None:
    """A fill time measured on a loaded moment must not switch batching off for good: only a wait
    measures it again, so one batch in REPROBE_EVERY waits anyway."""
    ev = NNEvaluator(FakeNet(), POST, randomize=False, max_batch_size=2)
    ev._batch_seconds.update({1: 0.010, 2: 0.012})
    ev._fill_seconds[2] = 0.050  # a slow moment: 0.006 + 0.050 per row is worse than 0.8 x 0.010
    answers = [ev._batching_pays(2) for _ in range(3 * REPROBE_EVERY)]
    assert [i for i, pays in enumerate(answers) if pays] == [
        REPROBE_EVERY - 1,
        2 * REPROBE_EVERY - 1,
        3 * REPROBE_EVERY - 1,
    ]
    ev._fill_seconds[2] = 0.001  # the probe measured a quick fill: waiting pays again, every time
    assert all(ev._batching_pays(2) for _ in range(5))
