"""Strength check by play: Elo / interval / SPRT arithmetic, and a real short match via the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
from edge_fixtures import model_file

from agent.cli.main import run
from agent.game.board import BLACK, EMPTY, WHITE
from agent.game.coords import PASS_LOC
from agent.game.sgf import parse_sgf, sgf_rules, state_from_sgf
from agent.game.state import GameState
from agent.models.openings import Opening, openings_from_sgf
from agent.models.strength import (
    area_white_score,
    elo_estimate,
    elo_from_score,
    play_match,
    score_from_elo,
    sprt,
    sprt_bounds,
    sprt_llr,
    sprt_stop,
)

# --- Elo and its interval ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "elo"),
    [(0.5, 0.0), (0.64, 99.951), (0.75, 190.849), (0.25, -190.849), (1 / 11, -400.0), (10 / 11, 400.0)],
)
def test_elo_from_score__known_values(score: float, elo: float) -> None:
    assert elo_from_score(score) == pytest.approx(elo, abs=1e-3)
    assert score_from_elo(elo_from_score(score)) == pytest.approx(score, abs=1e-12)


def test_elo_from_score__all_or_nothing_is_infinite() -> None:
    assert elo_from_score(1.0) == math.inf and elo_from_score(0.0) == -math.inf


def test_elo_estimate__60_wins_40_losses() -> None:
    # s = 0.6, per-game variance 0.24, s +- 1.96 * sqrt(0.24 / 100) = [0.50398, 0.69602]
    est = elo_estimate(60, 0, 40)
    assert (est.games, est.score) == (100, 0.6)
    assert est.elo == pytest.approx(70.437, abs=1e-3)
    assert (est.low, est.high) == (pytest.approx(2.767, abs=1e-3), pytest.approx(143.909, abs=1e-3))
    assert est.text() == "+70 Elo, 95% interval [+3, +144]"


def test_elo_estimate__draws_narrow_the_interval() -> None:
    # 30/40/30: s = 0.5, variance (30 * 0.25 + 30 * 0.25) / 100 = 0.15
    est = elo_estimate(30, 40, 30)
    assert est.elo == 0.0
    assert (est.low, est.high) == (pytest.approx(-53.158, abs=1e-3), pytest.approx(53.158, abs=1e-3))
    assert est.high - est.low < elo_estimate(50, 0, 50).high - elo_estimate(50, 0, 50).low


# --- SPRT ----------------------------------------------------------------------------------------


def test_sprt_bounds_and_llr__known_values() -> None:
    lower, upper = sprt_bounds(0.05, 0.05)
    assert lower == pytest.approx(-2.9444, abs=1e-4) and upper == pytest.approx(2.9444, abs=1e-4)
    # s = 0.4, variance 0.24; s0 = score(-20) = 0.471249, s1 = score(-50) = 0.428537
    assert sprt_llr(40, 0, 60) == pytest.approx(0.88794, abs=1e-4)
    assert sprt_llr(0, 0, 0) == 0.0
    assert sprt(40, 0, 60).verdict == "undecided"


def test_sprt_stop__even_results_accept_h0() -> None:
    # score 0.5: LLR falls by (s1 - s0)(1 - s0 - s1) / (2 * 0.25) = 0.00856 a game -> ~344 games
    n, state = sprt_stop([1.0, 0.0] * 500)
    assert state.verdict == "H0" and 330 <= n <= 360 and n % 2 == 0
    assert state.llr <= state.lower


def test_sprt_stop__clearly_weaker_accepts_h1() -> None:
    # score 1/3 (-120 Elo): LLR rises by 0.0224 a game -> ~132 games
    n, state = sprt_stop([1.0, 0.0, 0.0] * 200)
    assert state.verdict == "H1" and 120 <= n <= 145
    assert "loses at least 50 Elo" in state.text()


def test_sprt_stop__a_losing_streak_decides_after_several_games_not_one() -> None:
    n, state = sprt_stop([0.0] * 40)
    assert state.verdict == "H1" and 6 <= n <= 12


def test_sprt_stop__a_short_match_stays_undecided() -> None:
    n, state = sprt_stop([1.0, 0.0, 0.5, 0.5] * 5)
    assert (n, state.verdict) == (20, "undecided")


# --- the match stops when the SPRT decides ------------------------------------------------------


@dataclass(frozen=True)
class _Move:
    loc: int
    winrate: float = 0.5  # never low enough to resign


class _CentreThenPass:
    """Plays the centre point once, then passes: its one stone owns the whole empty board."""

    def new_game(self) -> None:
        pass

    def choose(self, state: GameState) -> _Move:
        board = state.board
        centre = board.geo.loc(board.x_size // 2, board.y_size // 2)
        return _Move(centre if board.color[centre] == EMPTY else PASS_LOC)


class _Passer:
    def new_game(self) -> None:
        pass

    def choose(self, state: GameState) -> _Move:
        return _Move(PASS_LOC)


def test_play_match__stops_after_the_pair_where_the_sprt_decides(tmp_path: Path) -> None:
    # the converted side wins every game (by area, in either colour): the LLR falls from the
    # first pair on and leaves [-2.94, 2.94] after the same number of games as sprt_stop's
    empty = [Opening("empty", 9, 9, ())]
    expected, decided = sprt_stop([1.0] * 40)
    assert decided.verdict == "H0" and expected % 2 == 0
    match = play_match(_CentreThenPass(), _Passer(), empty, 40, sgf_dir=tmp_path)
    assert match.results == [1.0] * expected and match.ends == {"passes": expected}
    assert match.sprt().verdict == "H0" and match.sprt().llr == pytest.approx(decided.llr)
    assert len(match.sgf_files) == expected == len(list(tmp_path.iterdir()))
    first = parse_sgf((tmp_path / "game-0001.sgf").read_text())
    assert first.properties["RE"] == ["B+73.5"]  # 81 points minus komi 7.5, converted as Black
    assert parse_sgf((tmp_path / "game-0002.sgf").read_text()).properties["RE"] == ["W+88.5"]
    # without early stopping every game is played
    assert len(play_match(_CentreThenPass(), _Passer(), empty, 40, stop_early=False).results) == 40


# --- openings and a real match -------------------------------------------------------------------


def test_openings_from_sgf__prefixes_of_games_that_fit(reference_dir: Path) -> None:
    openings = openings_from_sgf(reference_dir / "sgf", 6, board=9, moves=(4, 6), seed=3)
    assert len(openings) == 6
    assert all(o.name.startswith("g09_") and (o.x_size, o.y_size) == (9, 9) for o in openings)
    assert all(4 <= len(o.moves) <= 6 for o in openings)
    assert [c for _, c in openings[0].moves[:2]] == [BLACK, WHITE]


def test_verify_games__short_match_records_result_and_sgf(
    models_dir: Path, reference_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = model_file(models_dir, "b6c96")
    out = tmp_path / "b6.fp32.onnx"
    common = ["--threads", "1", "--positions", str(reference_dir / "sgf"), "--verify-positions", "20"]
    assert run(["convert", str(model), "--to", "onnx", "--board", "9", "-o", str(out), *common]) == 0
    capsys.readouterr()
    code = run(["verify", str(out), "--reference", str(model), "--games", "4", "--visits", "8", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    strength = json.loads((tmp_path / "b6.fp32.onnx.manifest.json").read_text())["strength"]
    assert strength == printed
    assert strength["games"] == 4 and strength["wins"] + strength["draws"] + strength["losses"] == 4
    assert (strength["visits"], strength["board"], strength["rules"]) == (8, 9, "tromp-taylor")
    assert strength["sprt"]["verdict"] == "undecided" and strength["sprt"]["bounds"] == [-2.944, 2.944]
    assert sum(strength["ends"].values()) == 4
    files = sorted((tmp_path / "b6.fp32.onnx.games").iterdir())
    assert [f.name for f in files] == [f"game-000{i}.sgf" for i in range(1, 5)]
    wins = 0
    for i, path in enumerate(files):
        game = parse_sgf(path.read_text())
        props = game.properties
        conv_black = (i + i // 2) % 2 == 0  # pairs alternate the colour the converted net takes first
        assert props["PB"][0] == ("b6.fp32.onnx" if conv_black else "g170-b6c96-s175395328-d26788732 FP32")
        result = props["RE"][0]
        if not result.endswith("+R"):  # ended by passes: the rules engine's score is the result
            state = state_from_sgf(game, rules=sgf_rules(game))
            score = area_white_score(state)
            assert result == (f"W+{score:g}" if score > 0 else f"B+{-score:g}")
        wins += result.startswith("B") == conv_black
    assert wins == strength["wins"]
