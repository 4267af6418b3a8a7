"""The analysis engine's root inputs (``ignorePreRootHistory`` + ``conservativePass``) reproduce
KataGo's recorded ``rootInfo.rawWinrate`` through the numpy reference network."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from edge_fixtures import model_file

from agent.game.board import BLACK
from agent.game.features import encode_v7
from agent.game.position import position_from_query
from agent.game.state import GameState

# empty-ish 9x9, a finished 9x9 game (conservative pass changes the value a lot), a 13x9 board
IDS = ("g09_01_m001", "g09_01_m041", "g13x9_01_m058")


def _raw_black_winrate(net: Any, st: GameState, **options: Any) -> float:
    from agent.backends.base import NNInputs

    spatial, glob = encode_v7(st, **options)
    out = net.evaluate(NNInputs(spatial[None], glob[None]))
    w, lo, n = (float(v) for v in out.value[0])
    impossible = st.rules.ko != "SIMPLE" and st.rules.scoring != "TERRITORY"
    m = max(w, lo, n if not impossible else -math.inf)
    ew, el = math.exp(w - m), math.exp(lo - m)
    en = 0.0 if impossible else math.exp(n - m)
    win, loss = ew / (ew + el + en), el / (ew + el + en)
    return 0.5 + 0.5 * (win - loss) if st.pla == BLACK else 0.5 + 0.5 * (loss - win)


@pytest.mark.needs_models
@pytest.mark.slow
def test_analysis_root_inputs__raw_winrate_matches_katago(models_dir: Path, reference_dir: Path) -> None:
    from agent.backends.numpy.runtime import NumpyNet

    net = NumpyNet(model_file(models_dir, "b10c384"))
    with open(reference_dir / "analysis-b10c384.jsonl") as f:
        pairs = {p["id"]: p for p in map(json.loads, f)}
    for pid in IDS:
        q = pairs[pid]["query_obj"]
        st = position_from_query(
            q["moves"], rules=q["rules"], komi=q.get("komi"), board_x=q["boardXSize"], board_y=q["boardYSize"]
        )
        got = _raw_black_winrate(net, st, max_history=0, conservative_pass=True)
        assert got == pytest.approx(pairs[pid]["response"]["rootInfo"]["rawWinrate"], abs=1e-5), pid
