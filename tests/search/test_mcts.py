"""MCTS behaviour over the deterministic fake network (fast)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
import pytest

from agent.backends.fake import FakeNet
from agent.engines.native import NativeEngine
from agent.network.model import PostProcessParams
from agent.protocol.query import parse_query
from agent.protocol.replay import build_turns
from agent.protocol.response import analysis_json
from agent.protocol.service import AnalysisService, analysis_query
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


def test_mcts__visits_reach_limit_and_edges_add_up() -> None:
    s = make_search()
    s.run()
    root = s.root
    assert root.visits == 40
    assert int(root.e_visits.sum()) == 39
    assert int(np.abs(root.e_virtual).sum()) == 0
    assert root.weight > root.e_weight.sum() > 0


@pytest.mark.parametrize("threads", [2, 4])
def test_mcts__search_threads_leave_no_virtual_loss(threads: int) -> None:
    ev = NNEvaluator(FakeNet(delay=0.001), POST, randomize=False, max_batch_size=threads).start()
    try:
        s = make_search(SearchParams(max_visits=60, num_threads=threads), ev)
        s.run()
    finally:
        ev.close()
    assert 60 <= s.root.visits <= 60 + threads
    stack = [s.root]
    while stack:
        n = stack.pop()
        assert int(np.abs(n.e_virtual).sum()) == 0
        assert not n.pending
        stack.extend(c for c in n.children if c is not None)
    assert ev.rows >= 30 and ev.batches <= ev.rows


def test_mcts__response_fields_and_perspectives() -> None:
    s = make_search()
    s.run()
    black = analysis_json(s, perspective="BLACK", include_policy=True, include_ownership=True)
    white = analysis_json(s, perspective="WHITE", include_ownership=True)
    assert black is not None and white is not None
    assert abs(black["rootInfo"]["winrate"] + white["rootInfo"]["winrate"] - 1.0) < 1e-9
    assert abs(black["rootInfo"]["scoreLead"] + white["rootInfo"]["scoreLead"]) < 1e-9
    assert np.allclose(np.array(black["ownership"]), -np.array(white["ownership"]))
    side = analysis_json(s, perspective="SIDETOMOVE")
    assert side is not None and side["rootInfo"]["winrate"] == black["rootInfo"]["winrate"]  # Black to move
    infos = black["moveInfos"]
    assert infos[0]["order"] == 0 and infos[0]["pv"][0] == infos[0]["move"]
    assert sum(m["edgeVisits"] for m in infos if "isSymmetryOf" not in m) == 39
    assert len(black["policy"]) == 82 and black["policy"][4 * 9 + 4] == -1  # E5: x=4, y=9-5
    assert black["policy"][6 * 9 + 2] == -1  # C3: x=2, y=9-3


def test_mcts__avoid_moves_are_never_searched_at_the_root() -> None:
    eng = engine()
    svc = AnalysisService(eng)
    sink = Sink()
    avoid = ["D4", "D5", "D6", "E4", "E6", "F4", "F5", "F6", "G7", "C7", "G3"]
    svc.handle_line(json.dumps(query(avoidMoves=[{"player": "B", "moves": avoid, "untilDepth": 1}])), sink)
    svc.close()
    final = next(r for r in sink.items if r.get("isDuringSearch") is False)
    assert not {m["move"] for m in final["moveInfos"]} & set(avoid)


def test_mcts__allow_moves_restricts_the_root() -> None:
    eng = engine()
    svc = AnalysisService(eng)
    sink = Sink()
    svc.handle_line(
        json.dumps(query(allowMoves=[{"player": "B", "moves": ["A1", "J9"], "untilDepth": 1}])), sink
    )
    svc.close()
    final = next(r for r in sink.items if r.get("isDuringSearch") is False)
    assert {m["move"] for m in final["moveInfos"]} <= {"A1", "J9"}
    assert final["rootInfo"]["visits"] == 30


def test_mcts__report_during_search_then_one_final() -> None:
    net = FakeNet(delay=0.002)
    eng = NativeEngine(net, default_params=SearchParams(max_visits=150), randomize=False)
    svc = AnalysisService(eng)
    sink = Sink()
    svc.handle_line(json.dumps(query(reportDuringSearchEvery=0.05)), sink)
    svc.close()
    during = [r for r in sink.items if r.get("isDuringSearch") is True]
    finals = [r for r in sink.items if r.get("isDuringSearch") is False]
    assert len(finals) == 1 and finals[0] is sink.items[-1]
    assert during and all(r["rootInfo"]["visits"] <= finals[0]["rootInfo"]["visits"] for r in during)


def test_mcts__territory_pass_after_two_passes_is_terminal() -> None:
    moves = [["B", "E5"], ["W", "C3"], ["B", "pass"], ["W", "pass"]]
    s = make_search(SearchParams(max_visits=60), moves=moves, rules="japanese", komi=6.5)
    s.prepare_root()
    child = s._child(s.root, s.root.child_index(81))
    assert child.nn_terminal  # territory scoring: past the normal end, the node is never expanded
    s.run()
    res = analysis_json(s, perspective="BLACK", pv_len=5)
    assert res is not None
    pass_info = [m for m in res["moveInfos"] if m["move"] == "pass"]
    assert not pass_info or pass_info[0]["pv"] == ["pass"]


def test_mcts__conservative_pass_keeps_the_root_pass_child_alive() -> None:
    moves = [["B", "E5"], ["W", "C3"], ["B", "pass"], ["W", "pass"]]
    s = make_search(SearchParams(max_visits=60), moves=moves, rules="tromp-taylor", komi=7.5)
    s.prepare_root()
    child = s._child(s.root, s.root.child_index(81))
    assert child.terminal is None  # conservativePass: the root's pass does not end the game
    s2 = make_search(SearchParams(max_visits=60, conservative_pass=False), moves=moves, rules="tromp-taylor")
    s2.prepare_root()
    child2 = s2._child(s2.root, s2.root.child_index(81))
    assert child2.terminal is not None and child2.terminal.weight > 0


def test_mcts__priorities_run_higher_first() -> None:
    net = FakeNet(delay=0.003)
    eng = NativeEngine(net, default_params=SearchParams(max_visits=20), randomize=False)
    svc = AnalysisService(eng)
    order: list[str] = []

    def sink(r: dict[str, Any]) -> None:
        if r.get("isDuringSearch") is False:
            order.append(r["id"])

    svc.handle_line(json.dumps(query(id="first")), sink)
    time.sleep(0.05)
    svc.handle_line(json.dumps(query(id="low", priority=-5)), sink)
    svc.handle_line(json.dumps(query(id="high", priority=10)), sink)
    svc.handle_line(json.dumps(query(id="mid")), sink)
    svc.close()
    assert order == ["first", "high", "mid", "low"]


def test_mcts__tree_reuse_when_the_next_query_extends_the_last() -> None:
    eng = engine(params=SearchParams(max_visits=80))
    svc = AnalysisService(eng)
    sink = Sink()
    svc.handle_line(json.dumps(query(id="a")), sink)
    while not [r for r in sink.items if r.get("id") == "a"]:
        time.sleep(0.01)
    best = sink.items[0]["moveInfos"][0]["move"]
    svc.handle_line(json.dumps(query(id="b", moves=[["B", "E5"], ["W", "C3"], ["B", best]])), sink)
    svc.close()
    stats = eng.stats()
    assert stats["finished"] == 2
    assert stats["visits"] < 160  # the second search started from the first one's subtree


def test_mcts__root_symmetries_average_the_policy() -> None:
    ev = NNEvaluator(FakeNet(), POST, randomize=False)
    s = make_search(SearchParams(max_visits=1, root_num_symmetries_to_sample=8), ev)
    s.run()
    assert ev.rows == 8
    res = analysis_json(s, perspective="BLACK", include_policy=True)
    assert res is not None
    pol = np.array(res["policy"])
    assert abs(pol[pol >= 0].sum() - 1.0) < 1e-5


def test_mcts__nn_cache_hits_and_clear() -> None:
    ev = NNEvaluator(FakeNet(), POST, randomize=False)
    make_search(SearchParams(max_visits=1), ev).run()
    make_search(SearchParams(max_visits=1), ev).run()
    assert ev.cache_hits == 1
    ev.clear_cache()
    make_search(SearchParams(max_visits=1), ev).run()
    assert ev.cache_hits == 1 and ev.cache_misses == 2


def test_mcts__root_symmetry_pruning_reports_copies() -> None:
    s = make_search(SearchParams(max_visits=60), moves=[])
    s.run()
    assert len(s.root.moves) <= 16  # empty 9x9: 15 orbits of points, plus pass
    res = analysis_json(s, perspective="BLACK", include_pv_visits=True)
    assert res is not None
    copies = [m for m in res["moveInfos"] if "isSymmetryOf" in m]
    assert copies
    by_move = {m["move"]: m for m in res["moveInfos"]}
    for c in copies:
        src = by_move[c["isSymmetryOf"]]
        assert (c["visits"], c["winrate"], len(c["pv"])) == (src["visits"], src["winrate"], len(src["pv"]))
        assert c["move"] != src["move"]
    assert sum(m["edgeVisits"] for m in res["moveInfos"] if "isSymmetryOf" not in m) == 59


def test_mcts__ending_bonus_discourages_pointless_moves_and_territory_passes() -> None:
    from agent.search.ending import ending_white_bonus

    st = make_search(moves=[]).root.state  # empty 9x9, Black to move, area scoring
    moves = np.array([0, 40, 81])
    white_owns_all = np.ones(81, dtype=np.float32)
    bonus = ending_white_bonus(st, moves, white_owns_all, 0.5)
    assert np.allclose(bonus, [0.5, 0.5, 0.0])  # Black playing in White's sure area gives White 0.5
    assert not ending_white_bonus(st, moves, np.zeros(81, dtype=np.float32), 0.5).any()
    jp = make_search(moves=[], rules="japanese", komi=6.5).root.state
    assert ending_white_bonus(jp, np.array([81]), np.zeros(81, dtype=np.float32), 0.5)[0] == pytest.approx(
        1 / 3
    )


def test_mcts__no_result_value_on_request() -> None:
    s = make_search()
    s.run()
    res = analysis_json(s, perspective="BLACK", include_no_result_value=True)
    assert res is not None
    assert all(0.0 <= m["noResultValue"] <= 1.0 for m in res["moveInfos"])


@pytest.mark.parametrize("threads", [1, 3])
def test_mcts__prefix_selection_matches_vectorised_selection(threads: int) -> None:
    """``_select_prefix`` (plain Python over the tried children) must pick what the vectorised
    PUCT picks, virtual losses included: below the root always, at the root when its priors are
    sorted (``root_prefix_ok``), with wide root noise and with the root's ending bonus."""
    checked = mismatched = root_checked = bonus_checked = 0

    class Checked(Search):
        def _select(self, node: Any, rng: Any = None) -> int:
            nonlocal checked, mismatched, root_checked, bonus_checked
            if rng is not None:  # the speculator's peek (its own copy of the generator)
                return super()._select(node, rng)
            state = self.np_rng.bit_generator.state  # wide root noise draws the same numbers
            k = super()._select(node)
            after = self.np_rng.bit_generator.state
            self.np_rng.bit_generator.state = state
            checked += 1
            root_checked += node is self.root
            if node is self.root and self.root_prefix_ok and self.root_has_bonus:
                bonus_checked += bool(self._bonus_utility(node).any())  # a bonus moved a value
            mismatched += k != self._select_full(node)
            assert self.np_rng.bit_generator.state == after
            return k

    ev = NNEvaluator(FakeNet(), POST, randomize=False, max_batch_size=threads).start()
    try:
        request = parse_query(query(moves=[["B", "E5"], ["W", "C3"], ["B", "G7"]]), SearchParams())
        turns, _ = build_turns(request)
        s = Checked(ev, SearchParams(max_visits=300, num_threads=threads), SearchState(turns[-1][1]), seed=3)
        s.run()
        assert s.root_copies and not s.root_prefix_ok  # symmetric: merged orbits unsort the priors
        request = parse_query(query(moves=[["B", "E5"], ["W", "C3"], ["B", "G6"]]), SearchParams())
        turns, _ = build_turns(request)
        s = Checked(ev, SearchParams(max_visits=300, num_threads=threads), SearchState(turns[-1][1]), seed=3)
        s.run()
        # territory scoring: passing at the root costs a third of a point (the ending bonus); a
        # small board so that the pass gets visited
        request = parse_query(
            query(moves=[["B", "B2"]], rules="japanese", boardXSize=3, boardYSize=3), SearchParams()
        )
        turns, _ = build_turns(request)
        bonus = Checked(
            ev,
            SearchParams(max_visits=300, num_threads=threads, root_ending_bonus_points=0.5),
            SearchState(turns[-1][1]),
            seed=3,
        )
        bonus.run()
    finally:
        ev.close()
    assert s.params.wide_root_noise > 0 and s.root_prefix_ok
    assert bonus.root_has_bonus and bonus.root_prefix_ok and bonus_checked > 100
    assert root_checked > 500 and checked > root_checked + 400 and mismatched == 0


def _search_moves(s: Search) -> list[tuple[int, int, float]]:
    root = s.root
    return [
        (int(m), int(v), round(float(w), 9))
        for m, v, w in zip(root.moves, root.e_visits, root.e_weight, strict=True)
        if v > 0
    ]


class _UncancellableNet(FakeNet):
    """A runtime that cannot abandon a run (like TFLite): the speculator only prepares inputs."""

    def make_cancel(self) -> None:
        return None


@pytest.mark.parametrize("mode", ["network", "helper"])
def test_mcts__speculation_prepares_leaves_without_changing_the_search(mode: str) -> None:
    """With one search thread the next leaf is predicted while the network runs: its inputs are
    prepared and, where the runtime can cancel a run ("network" mode), its evaluation started
    behind the current one. The search must be the same visit for visit (same seeds, random
    symmetries included) with and without it, and the predictions must actually be used."""
    moves = [["B", "E5"], ["W", "C3"], ["B", "G6"], ["W", "F3"]]
    net_type = FakeNet if mode == "network" else _UncancellableNet
    out = {}
    for speculate in (False, True):
        params = SearchParams(max_visits=100, speculate=speculate)
        ev = NNEvaluator(net_type(delay=0.02), POST, randomize=True, seed=11)
        req = parse_query(query(moves=moves), params)
        turns, _ = build_turns(req)
        s = Search(ev, req.params, SearchState(turns[-1][1]), track_ownership=True, seed=7)
        s.run()
        ev.close()
        out[speculate] = (s, _search_moves(s), ev.rows)
    off, on = out[False][0], out[True][0]
    assert off.speculated == (0, 0)
    prepared, used = on.speculated
    assert used >= 40 and prepared >= used  # FakeNet's 20 ms leave time for every leaf
    started, used_runs = on.speculated_runs
    if mode == "network":
        assert used_runs >= 40 and started >= used_runs
    else:
        assert started == used_runs == 0
    assert out[True][1] == out[False][1]
    assert on.root.visits == off.root.visits == 100
    assert out[True][2] == out[False][2]  # network runs the search used: the same count
    assert np.array_equal(on.root.own_sum, off.root.own_sum)


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


def test_evaluator__server_thread_batches_concurrent_requests_and_ends_on_close() -> None:
    """Several submitters go through the server thread: each gets its own row's evaluation
    (equal to a direct evaluation of the same position), batches form, and close() ends it."""
    net = FakeNet(delay=0.01)
    ev = NNEvaluator(net, POST, randomize=False, max_batch_size=4)
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
    assert stats["nn_rows"] == 4 and stats["nn_batches"] < 4  # at least one batch of several rows
    server = ev._server
    assert server is not None and server.is_alive()
    ev.close()
    server.join(5)
    assert not server.is_alive()


def test_mcts__concurrent_one_thread_searches_still_batch_through_the_evaluator() -> None:
    """Network-mode speculation is for a lone search: with two analysis threads (one search
    thread each) the searches' leaves share batches in the evaluator instead of each search
    running its own network thread."""
    params = SearchParams(max_visits=60)
    eng = NativeEngine(
        FakeNet(delay=0.01),
        default_params=params,
        randomize=False,
        seed=5,
        num_analysis_threads=2,
        max_batch_size=2,
    )
    sink = Sink()
    try:
        for qid, extra in (("a", "D4"), ("b", "F6")):
            eng.submit(
                analysis_query(
                    query(id=qid, moves=[["B", "E5"], ["W", "C3"], ["B", extra]], maxVisits=60), params
                ),
                sink,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len([r for r in sink.items if not r.get("isDuringSearch")]) < 2:
            time.sleep(0.05)
        stats = eng.evaluator.stats()
    finally:
        eng.close()
    finals = {r["id"]: r for r in sink.items if not r.get("isDuringSearch")}
    assert set(finals) == {"a", "b"} and all(r["rootInfo"]["visits"] >= 60 for r in finals.values())
    assert stats["nn_avg_batch"] > 1.3  # most of the two searches' leaves were evaluated in pairs
