"""Root symmetry pruning (``agent.search.symmetry``): index maps, the symmetries of a position, orbits."""

from __future__ import annotations

import pytest
from search_support import search_state

from agent.search.symmetry import map_index, orbits, position_symmetries


@pytest.mark.parametrize(
    ("index", "sym", "image"),
    [
        (0, 0, 0),  # identity
        (0, 1, 72),  # A9 -> A1: flip Y
        (0, 2, 8),  # flip X
        (0, 3, 80),  # both: the opposite corner
        (1, 4, 9),  # transpose: (x=1, y=0) -> (x=0, y=1)
        (81, 5, 81),  # pass maps to itself
    ],
)
def test_map_index__9x9(index: int, sym: int, image: int) -> None:
    assert map_index(index, sym, 9, 9) == image


def test_map_index__every_symmetry_is_a_permutation_and_flips_are_involutions() -> None:
    for sym in range(8):
        images = [map_index(i, sym, 9, 9) for i in range(82)]
        assert sorted(images) == list(range(82))
    for sym in (1, 2, 3):
        assert all(map_index(map_index(i, sym, 9, 9), sym, 9, 9) == i for i in range(82))


def test_map_index__rectangular_board_flips() -> None:
    # 7 wide, 5 high: (x=0, y=0) -> flip X -> (6, 0); flip Y -> (0, 4)
    assert map_index(0, 2, 7, 5) == 6
    assert map_index(0, 1, 7, 5) == 28


def test_position_symmetries__empty_board_has_all_seven() -> None:
    assert position_symmetries(search_state([])) == [1, 2, 3, 4, 5, 6, 7]


def test_position_symmetries__centre_stone_keeps_all_a_corner_stone_one_diagonal() -> None:
    assert position_symmetries(search_state([["B", "E5"]])) == [1, 2, 3, 4, 5, 6, 7]
    # C3 lies on the A1-J9 diagonal: only the reflection in that diagonal leaves it in place
    syms = position_symmetries(search_state([["B", "C3"]]))
    assert len(syms) == 1
    c3 = search_state([]).index_of_xy((2, 6))
    assert map_index(c3, syms[0], 9, 9) == c3


def test_position_symmetries__rectangular_board_never_transposes() -> None:
    state = search_state([], size=9, boardXSize=9, boardYSize=7)
    assert position_symmetries(state) == [1, 2, 3]


def test_orbits__the_four_corners_are_copies_of_the_first() -> None:
    corners = [0, 8, 72, 80]
    assert orbits(corners, [1, 2, 3], 9, 9) == {72: (0, 1), 8: (0, 2), 80: (0, 3)}
    assert orbits([40], [1, 2, 3], 9, 9) == {}  # the centre is its own image
