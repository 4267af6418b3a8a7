"""Ladder features (V7 channels 14-17) on ASCII boards; White to move, Black defends."""

from __future__ import annotations

import numpy as np

from agent.game.board import BLACK, WHITE
from agent.game.features import encode_v7
from agent.game.ladder import ladder_captured, ladder_scan
from agent.game.position import state_from_ascii

LADDER = """
.........
.........
.........
.........
.........
..O......
..OXO....
...O.....
.........
"""


def _with_stone(text: str, x: int, y: int, ch: str) -> str:
    rows = [list(r.strip()) for r in text.strip().splitlines()]
    rows[y][x] = ch
    return "\n".join("".join(r) for r in rows)


def _laddered(text: str) -> list[str]:
    s = state_from_ascii(text, WHITE)
    return [s.board.geo.to_gtp(loc) for loc in ladder_scan(s.board).laddered]


def test_ladder__works_without_breaker() -> None:
    assert _laddered(LADDER) == ["D3"]
    s = state_from_ascii(LADDER, WHITE)
    d3 = s.board.geo.from_gtp("D3")
    before = (s.board.color[:], s.board.hash, s.board.ko_loc)
    assert ladder_captured(s.board, d3, True)
    assert (s.board.color, s.board.hash, s.board.ko_loc) == before  # search undoes its moves
    spatial, _ = encode_v7(s, nn_x=9, nn_y=9)
    assert spatial[14, 6, 3] == 1.0 and spatial[14].sum() == 1.0
    # no history: channels 15 and 16 repeat the current board's ladder status
    np.testing.assert_array_equal(spatial[15], spatial[14])
    np.testing.assert_array_equal(spatial[16], spatial[14])


def test_ladder__broken_by_ladder_breaker_on_the_path() -> None:
    assert _laddered(_with_stone(LADDER, 6, 2, "X")) == []  # G7 sits on the ladder's diagonal


def test_ladder__stone_off_the_path_does_not_break() -> None:
    # a lone corner stone is not a breaker (and is itself laddered: it has 2 liberties)
    assert _laddered(_with_stone(LADDER, 8, 0, "X")) == ["J9", "D3"]


def test_ladder__capture_to_escape() -> None:
    text = _with_stone(_with_stone(LADDER, 2, 7, "X"), 3, 8, "X")  # White D2 now in atari
    assert _laddered(text) == []


def test_ladder__working_moves_channel_17_for_two_liberty_chain() -> None:
    text = _with_stone(LADDER, 4, 6, ".")  # D3 now has 2 liberties: D4, E3
    s = state_from_ascii(text, WHITE)
    scan = ladder_scan(s.board)
    assert [s.board.geo.to_gtp(m) for m in scan.working[BLACK]] == ["E3"]
    spatial, _ = encode_v7(s, nn_x=9, nn_y=9)
    assert spatial[14, 6, 3] == 1.0
    assert spatial[17, 6, 4] == 1.0 and spatial[17].sum() == 1.0
    # from Black's side the chain is "own": no working moves against own stones
    s_black = state_from_ascii(text, BLACK)
    spatial_b, _ = encode_v7(s_black, nn_x=9, nn_y=9)
    assert spatial_b[17].sum() == 0.0 and spatial_b[14, 6, 3] == 1.0


def test_ladder__reuse_from_parent_board_matches_a_fresh_scan() -> None:
    """``ladder_scan(child, parent)`` takes unaffected chains' results from the parent's scan; on
    random fights (moves biased next to short-of-liberty chains) it must equal a scan from scratch."""
    import random

    from agent.game.board import EMPTY, Board

    rng = random.Random(11)
    pairs = reused = 0
    for size in (9, 13, 19):
        b = Board(size, size)
        pla = BLACK
        for _ in range(size * size):
            cand = [
                loc
                for loc in b.geo.all_locs()
                if b.color[loc] == EMPTY
                and b.is_legal(loc, pla, False)
                and not all(b.color[n] in (pla, 3) for n in b.neighbors(loc))
            ]
            if not cand:
                break
            hot = [
                loc
                for loc in cand
                if any(b.color[n] in (BLACK, WHITE) and b.num_liberties(n) <= 2 for n in b.neighbors(loc))
            ]
            parent = b.copy()
            ladder_scan(parent)
            for _ in range(2):
                child = parent.copy()
                child.play(rng.choice(hot) if hot and rng.random() < 0.7 else rng.choice(cand), pla)
                got = ladder_scan(child, parent)
                ref = ladder_scan(child.copy())
                assert got.laddered == ref.laddered
                assert sorted(got.working[BLACK]) == sorted(ref.working[BLACK])
                assert sorted(got.working[WHITE]) == sorted(ref.working[WHITE])
                pairs += 1
                reused += got.reused
            b.play(rng.choice(hot) if hot and rng.random() < 0.7 else rng.choice(cand), pla)
            pla = 3 - pla
    assert pairs > 300 and reused > pairs  # reuse does happen
