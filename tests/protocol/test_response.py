"""A search as KataGo's response JSON (``agent.protocol.response``): perspectives, symmetric copies, optional fields."""

from __future__ import annotations

import numpy as np
from search_support import make_search

from agent.protocol.response import analysis_json
from agent.search.params import SearchParams


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


def test_mcts__no_result_value_on_request() -> None:
    s = make_search()
    s.run()
    res = analysis_json(s, perspective="BLACK", include_no_result_value=True)
    assert res is not None
    assert all(0.0 <= m["noResultValue"] <= 1.0 for m in res["moveInfos"])
