"""SGF (FF[4]) reading and writing for Go games.

Read: the main line only (first child at every branch). Root properties ``SZ`` (``19`` or
rectangular ``13:9`` = columns:rows), ``KM``, ``RU`` (KataGo rules names, plus common SGF
spellings: ``Japanese``, ``Chinese``, ``AGA``, ``NZ``...), ``HA``, setup ``AB``/``AW``/``AE``,
``PL``; moves ``B``/``W`` with pass as ``[]`` or ``[tt]`` (on boards up to 19x19). Point ``aa``
is the top-left corner: first letter = column, second = row from the top.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.errors import SgfError
from agent.game.board import BLACK, EMPTY, WHITE
from agent.game.coords import PASS_LOC, Geometry
from agent.game.rules import Rules, parse_rules
from agent.game.state import GameState


@dataclass
class SgfGame:
    """What the main line of an SGF says about a game."""

    x_size: int = 19
    y_size: int = 19
    komi: float | None = None
    rules_text: str | None = None
    handicap: int = 0
    setup: list[tuple[int, int]] = field(default_factory=list)  # (loc, colour) after AB/AW/AE
    first_player: int | None = None  # PL
    moves: list[tuple[int, int]] = field(default_factory=list)  # (loc, colour); PASS_LOC for pass
    properties: dict[str, list[str]] = field(default_factory=dict)  # root properties, raw
    node_comments: list[str] = field(default_factory=list)  # C[] of the node after each move

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.x_size, self.y_size)


def parse_sgf(text: str) -> SgfGame:
    raise NotImplementedError


def sgf_rules(game: SgfGame, default: str = "tromp-taylor") -> Rules:
    raise NotImplementedError


def state_from_sgf(game: SgfGame, num_moves: int | None = None, rules: Rules | None = None) -> GameState:
    raise NotImplementedError


def write_sgf(
    x_size: int,
    y_size: int,
    moves: list[tuple[int, int]],
    *,
    komi: float | None = None,
    rules: str | None = None,
    setup: list[tuple[int, int]] | None = None,
    first_player: int | None = None,
) -> str:
    raise NotImplementedError


__all__ = ["BLACK", "EMPTY", "PASS_LOC", "WHITE", "SgfError", "parse_rules"]
