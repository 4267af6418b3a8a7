"""Positions from KataGo analysis-query fields (``moves``, ``initialStones``, ``initialPlayer``).

Replays like KataGo's analysis engine (``cpp/command/analysis.cpp``):

* setup stones are placed on an empty board (no captures; a point given twice is an error);
* the first player is ``initialPlayer``, else the colour of the first move, else White when the
  setup holds handicap stones (>= 2 black stones and no white one), else Black;
* a move by the player who is not to move first clears the history (``GameState.play_move``);
* each move must be *tolerantly* legal (empty point, not single-stone suicide): otherwise
  ``IllegalMoveError("Illegal move N: LOC")`` with ``N`` the 0-based index in ``moves``.

``replay_query`` returns the state after every prefix (index ``k`` = after ``k`` moves), which is
what ``analyzeTurns`` needs; states share board snapshots, so this costs one board per move.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.errors import CoordinateError, GameError
from agent.game.board import BLACK, EMPTY, WHITE, Board
from agent.game.coords import PASS_LOC, gtp_to_loc
from agent.game.rules import Rules, komi_is_valid, parse_rules
from agent.game.state import GameState

MoveList = Sequence[Sequence[str]]


def parse_player(text: str) -> int:
    """``b``/``w``/``black``/``white`` (case-insensitive) -> ``BLACK``/``WHITE``."""
    t = text.strip().lower() if isinstance(text, str) else ""
    if t in ("b", "black"):
        return BLACK
    if t in ("w", "white"):
        return WHITE
    raise GameError(f"Could not parse player: {text}")


def parse_moves(moves: MoveList, x_size: int, y_size: int, allow_pass: bool = True) -> list[tuple[int, int]]:
    """``[[player, vertex], ...]`` -> ``[(loc, pla), ...]``; raises ``GameError``/``CoordinateError``."""
    out = []
    for entry in moves:
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise GameError(f"Could not parse move: {entry!r}")
        pla = parse_player(entry[0])
        if not isinstance(entry[1], str):
            raise CoordinateError(f"Could not parse board location: {entry[1]!r}")
        loc = gtp_to_loc(entry[1], x_size, y_size)
        if loc == PASS_LOC and not allow_pass:
            raise CoordinateError(f"Could not parse board location: {entry[1]}")
        out.append((loc, pla))
    return out


def setup_board(x_size: int, y_size: int, initial_stones: MoveList | None) -> Board:
    board = Board(x_size, y_size)
    for loc, pla in parse_moves(initial_stones or [], x_size, y_size, allow_pass=False):
        if board.color[loc] != EMPTY:
            raise GameError(f"Setup stone on an occupied point: {board.geo.to_gtp(loc)}")
        board.color[loc] = pla
    board.rebuild()
    return board


def _handicap_stones_on_board(board: Board) -> int:
    nb = nw = 0
    for loc in board.geo.all_locs():
        c = board.color[loc]
        nb += c == BLACK
        nw += c == WHITE
    return 0 if nw or nb <= 1 else nb


def _resolve_rules(rules: str | dict[str, Any] | Rules, komi: float | None) -> Rules:
    r = rules if isinstance(rules, Rules) else parse_rules(rules)
    if komi is not None:
        if not komi_is_valid(float(komi)):
            raise GameError("komi must be an integer or half-integer in [-400, 400]")
        r = r.with_komi(float(komi))
    return r


def replay_query(
    moves: MoveList,
    *,
    initial_stones: MoveList | None = None,
    initial_player: str | None = None,
    rules: str | dict[str, Any] | Rules = "tromp-taylor",
    komi: float | None = None,
    board_x: int = 19,
    board_y: int = 19,
    every_turn: bool = True,
) -> list[GameState]:
    """States after 0, 1, ..., len(moves) moves of an analysis query (only the last one when not
    ``every_turn``); see the module docstring for KataGo's replay conventions."""
    r = _resolve_rules(rules, komi)
    board = setup_board(board_x, board_y, initial_stones)
    parsed = parse_moves(moves, board_x, board_y)
    if initial_player is not None:
        first = parse_player(initial_player)
    elif parsed:
        first = parsed[0][1]
    else:
        first = WHITE if _handicap_stones_on_board(board) > 0 else BLACK
    state = GameState(board, first, r)
    out = [state.copy()] if every_turn else []
    for i, (loc, pla) in enumerate(parsed):
        state.play_move(loc, pla, move_index=i)
        if every_turn:
            out.append(state.copy())
    return out if every_turn else [state]


def position_from_query(moves: MoveList, **setup: Any) -> GameState:
    """The state after all ``moves``: ``replay_query``'s last state, with the same keywords."""
    return replay_query(moves, every_turn=False, **setup)[-1]


def state_from_ascii(text: str, pla: int, rules: str | dict[str, Any] | Rules = "tromp-taylor") -> GameState:
    """A position from an ASCII board (rows top to bottom; ``X`` black, ``O`` white, ``.`` empty),
    with ``pla`` to move and no history. Handy for tests and debugging."""
    r = rules if isinstance(rules, Rules) else parse_rules(rules)
    return GameState(Board.from_rows([line.strip() for line in text.strip().splitlines()]), pla, r)
