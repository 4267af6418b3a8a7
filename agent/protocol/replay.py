"""Replay a validated query once, as ``katago analysis`` does, into the positions to analyse.

Initial stones, the initial player (the first mover, else White when Black has handicap stones),
then the moves: a move by the player not to move clears the history, and moves only need to be
*tolerantly* legal (an empty point, not single-stone suicide). A failure is ``Illegal move N:
LOC`` on field ``moves`` (clients match on that text). The result, one ``GameState`` snapshot
per analysed turn, is what the engine searches: the query is never replayed twice.
"""

from __future__ import annotations

from agent.engines.base import AnalysisRequest
from agent.errors import IllegalMoveError, QueryError
from agent.game.board import BLACK, WHITE, Board
from agent.game.coords import PASS_LOC
from agent.game.rules import supported_rules
from agent.game.state import GameState
from agent.search.position import COLOR


def _num_handicap_on_board(board: Board) -> int:
    nb = sum(1 for loc in board.geo.all_locs() if board.color[loc] == BLACK)
    nw = sum(1 for loc in board.geo.all_locs() if board.color[loc] == WHITE)
    return 0 if nw or nb <= 1 else nb


def build_turns(request: AnalysisRequest) -> tuple[list[tuple[int, GameState]], list[tuple[str, str]]]:
    """Replay the query; ``[(turn, state)]`` for the analysed turns, and rules warnings."""
    rules, msgs = supported_rules(request.rules)
    warnings = [("rules", m) for m in msgs]
    board = Board(request.x_size, request.y_size)
    geo = board.geo
    for color, stone in request.initial_stones:
        if stone is not None:
            board.color[geo.loc(*stone)] = COLOR[color]
    board.rebuild()
    if request.initial_player is not None:
        pla = COLOR[request.initial_player]
    elif request.moves:
        pla = COLOR[request.moves[0][0]]
    else:
        pla = WHITE if _num_handicap_on_board(board) > 0 else BLACK
    state = GameState(board, pla, rules)
    wanted = set(request.analyze_turns)
    out: list[tuple[int, GameState]] = []
    for turn in range(len(request.moves) + 1):
        if turn in wanted:
            out.append((turn, state.copy()))
        if turn >= len(request.moves):
            break
        color, xy = request.moves[turn]
        loc = PASS_LOC if xy is None else geo.loc(*xy)
        try:
            state.play_move(loc, COLOR[color], move_index=turn)
        except IllegalMoveError as exc:
            raise QueryError(f"Illegal move {turn}: {geo.to_gtp(loc)}", "moves") from exc
    return out, warnings
