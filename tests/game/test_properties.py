"""Property tests (hypothesis): board invariants, symmetry commutation, SGF round trip."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.game.board import EMPTY, Board
from agent.game.coords import PASS_LOC, Geometry
from agent.game.features import encode_v7
from agent.game.position import position_from_query
from agent.game.rules import parse_rules
from agent.game.sgf import parse_sgf, state_from_sgf, write_sgf
from agent.game.state import GameState
from agent.game.symmetry import apply_symmetry, transform_xy

RULES = ["tromp-taylor", "chinese", "japanese", "aga", "new-zealand", "chinese-ogs", "stone-scoring"]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def games(draw: st.DrawFn, square: bool = False) -> tuple[GameState, list[int]]:
    xs = draw(st.integers(2, 9))
    ys = xs if square else draw(st.integers(2, 9))
    rules = parse_rules(draw(st.sampled_from(RULES)))
    state = GameState.empty(xs, ys, rules)
    n = draw(st.integers(0, 60))
    moves = []
    for _ in range(n):
        legal = state.legal_moves()
        # passes are rare so that games get dense (captures, ko, suicide)
        weights = draw(st.integers(0, 10**9))
        m = legal[weights % len(legal)] if weights % 17 else PASS_LOC
        moves.append(m)
        state.play(m)
    return state, moves


def _rebuilt(board: Board) -> Board:
    b = board.copy()
    b.rebuild()
    return b


@SETTINGS
@given(games())
def test_properties__random_games_keep_every_chain_alive_and_consistent(
    game: tuple[GameState, list[int]],
) -> None:
    state, _ = game
    board = state.board
    fresh = _rebuilt(board)
    assert fresh.hash == board.hash
    for loc in board.geo.all_locs():
        if board.color[loc] == EMPTY:
            continue
        libs = board.chain_libs(loc)
        assert libs, "a chain without liberties"
        assert libs == fresh.chain_libs(loc)
        assert sorted(board.chain_stones(loc)) == sorted(fresh.chain_stones(loc))
    for recent in state.recent:  # history snapshots were never mutated
        assert _rebuilt(recent).hash == recent.hash


def _transform_moves(moves: list[int], geo: Geometry, sym: int) -> list[list[str]]:
    out = []
    for i, m in enumerate(moves):
        colour = "B" if i % 2 == 0 else "W"
        if m == PASS_LOC:
            out.append([colour, "pass"])
            continue
        x, y = transform_xy(*geo.xy(m), sym, geo.x_size, geo.y_size)
        out.append([colour, geo.to_gtp(geo.loc(x, y))])
    return out


@SETTINGS
@given(games(square=True), st.integers(0, 7))
def test_properties__features_commute_with_board_symmetries(
    game: tuple[GameState, list[int]], sym: int
) -> None:
    state, moves = game
    geo = state.board.geo
    moved = position_from_query(
        _transform_moves(moves, geo, sym), rules=state.rules, board_x=geo.x_size, board_y=geo.y_size
    )
    n = geo.x_size
    spatial, glob = encode_v7(state, nn_x=n, nn_y=n)
    spatial_t, glob_t = encode_v7(moved, nn_x=n, nn_y=n)
    np.testing.assert_array_equal(spatial_t, apply_symmetry(spatial, sym))
    np.testing.assert_array_equal(glob_t, glob)
    np.testing.assert_array_equal(encode_v7(state, nn_x=n, nn_y=n, symmetry=sym)[0], spatial_t)


@SETTINGS
@given(games())
def test_properties__sgf_write_read_gives_same_position(game: tuple[GameState, list[int]]) -> None:
    state, moves = game
    geo = state.board.geo
    colours = [1 + i % 2 for i in range(len(moves))]
    text = write_sgf(geo.x_size, geo.y_size, list(zip(moves, colours, strict=True)), komi=state.rules.komi)
    back = state_from_sgf(parse_sgf(text), rules=state.rules)
    assert back.board.to_rows() == state.board.to_rows()
    assert (back.pla, back.board.ko_loc, back.superko_banned()) == (
        state.pla,
        state.board.ko_loc,
        state.superko_banned(),
    )
    s1, g1 = encode_v7(state)
    s2, g2 = encode_v7(back)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(g1, g2)
