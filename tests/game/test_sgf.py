"""SGF reading: the reference games give the reference tensors; parser edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.errors import IllegalMoveError, SgfError
from agent.game.board import BLACK, WHITE
from agent.game.coords import PASS_LOC
from agent.game.features import encode_v7
from agent.game.sgf import parse_sgf, sgf_rules, state_from_sgf, write_sgf


def test_sgf__reference_games_reproduce_reference_inputs(reference_dir: Path) -> None:
    npz = np.load(reference_dir / "inputs-v7.npz")
    with open(reference_dir / "rawnn-g170-b6c96.jsonl") as f:
        recs = [json.loads(line) for line in f]
    games = {}
    for i, r in enumerate(recs):
        if r["game_id"] not in games:
            games[r["game_id"]] = parse_sgf((reference_dir / r["sgf"]).read_text())
        game = games[r["game_id"]]
        assert (game.x_size, game.y_size) == (r["board_x_size"], r["board_y_size"])
        rules = sgf_rules(game)
        assert rules.to_json() == r["kata_rules"] and rules.komi == r["komi"]
        st = state_from_sgf(game, r["move_number"])
        spatial, glob = encode_v7(st)
        np.testing.assert_array_equal(spatial, npz["spatial"][i], err_msg=r["id"])
        np.testing.assert_allclose(glob, npz["global"][i], atol=1e-6, err_msg=r["id"])


def test_sgf__setup_rectangular_pass_and_variations() -> None:
    text = "(;FF[4]SZ[13:9]KM[0.5]RU[Japanese]HA[2]AB[aa][cc:dd]AW[mi]PL[W];W[];B[tt];W[ba](;B[ab])(;B[zz]))"
    game = parse_sgf(text)
    g = game.geometry
    assert (game.x_size, game.y_size, game.komi, game.handicap) == (13, 9, 0.5, 2)
    assert sorted(g.to_gtp(loc) for loc, c in game.setup if c == BLACK) == sorted(
        ["A9", "C7", "D7", "C6", "D6"]
    )
    assert [g.to_gtp(loc) for loc, c in game.setup if c == WHITE] == ["N1"]
    assert game.first_player == WHITE
    assert [(g.to_gtp(loc), c) for loc, c in game.moves] == [
        ("pass", WHITE),
        ("pass", BLACK),
        ("B9", WHITE),
        ("A8", BLACK),
    ]
    st = state_from_sgf(game)
    assert st.pla == WHITE and st.rules.scoring == "TERRITORY"
    assert st.board.to_rows()[0] == "XO..........."


def test_sgf__escapes_and_errors() -> None:
    assert parse_sgf(r"(;FF[4]C[a \] bracket]SZ[9];B[ee])").properties["C"] == ["a ] bracket"]
    for bad in ["no tree", "(;SZ[9];B[ee]", "(;SZ[30])", "(;SZ[9];B[zz])", "(;SZ[9]RU[weird];B[ee])"]:
        with pytest.raises(SgfError):
            sgf_rules(parse_sgf(bad))
    with pytest.raises(IllegalMoveError, match="Illegal move 1: E5"):
        state_from_sgf(parse_sgf("(;SZ[9];B[ee];W[ee])"))


def test_sgf__write_then_read_round_trip() -> None:
    moves = [(PASS_LOC, BLACK)]
    text = write_sgf(13, 9, moves, komi=6.5, rules="chinese", first_player=BLACK)
    game = parse_sgf(text)
    assert (game.x_size, game.y_size, game.komi, game.rules_text, game.moves) == (
        13,
        9,
        6.5,
        "chinese",
        moves,
    )
