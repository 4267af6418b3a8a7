"""KataGo's V7 NN input features (``NNInputs::fillRowV7``, spec §3): 22 spatial + 19 global.

Everything is from the side to move's view (``pla``; ``opp`` the other colour)::

    spatial  0 on board          1 pla stone        2 opp stone       3/4/5 chain has 1/2/3 libs
             6 ko / superko ban  7-8 encore only    9-13 last 5 move locations (opp, pla, ...)
             14/15/16 ladder-captured chains on the board now / 1 / 2 turns ago
             17 ladder-working moves against opp      18/19 pla/opp area   20-21 encore only
    global   0-4 last 5 moves were passes   5 selfKomi/20   6-7 ko rule   8 suicide
             9 territory scoring   10-11 tax   12-13 encore   14 pass would end phase
             15-16 playout doubling advantage   17 button   18 komi parity wave

Options used by KataGo's analysis engine (its root evaluation): ``max_history=0``
(``ignorePreRootHistory``; for a node below the root pass the number of moves since the root)
and ``conservative_pass=True`` (history and global 14 suppressed when a pass would end the game).
``kata-raw-nn`` uses the defaults (full history, no conservative pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from agent.game.area import area_masks, independent_life_area, mask_to_bool
from agent.game.board import EMPTY, WHITE, Board
from agent.game.coords import PASS_LOC
from agent.game.ladder import ladder_scan
from agent.game.rules import Rules
from agent.game.state import GameState
from agent.game.symmetry import apply_symmetry

F32 = npt.NDArray[np.float32]
NUM_SPATIAL = 22
NUM_GLOBAL = 19
KOMI_CLIP_RADIUS = 20.0


@lru_cache(maxsize=64)
def _pos_table(x_size: int, y_size: int, nn_x: int, nn_y: int) -> tuple[npt.NDArray[np.intp], list[int]]:
    """Buffer position of every loc (or -1), and the board's buffer positions in scan order."""
    stride = x_size + 1
    table = np.full((x_size + 1) * (y_size + 2) + 1, -1, dtype=np.intp)
    onboard = []
    for y in range(y_size):
        for x in range(x_size):
            table[(x + 1) + (y + 1) * stride] = y * nn_x + x
            onboard.append(y * nn_x + x)
    return table, onboard


@lru_cache(maxsize=64)
def _onboard_locs(x_size: int, y_size: int) -> npt.NDArray[np.intp]:
    stride = x_size + 1
    return np.array([(x + 1) + (y + 1) * stride for y in range(y_size) for x in range(x_size)], dtype=np.intp)


def _area(board: Board, scoring: str, tax: str, suicide: bool) -> npt.NDArray[np.int8] | None:
    """Area colour of every on-board point in scan order (``_onboard_locs``), cached per board."""
    if scoring != "AREA":
        return None  # territory scoring: only in encore phase 2, which GTP/analysis never reach
    key = f"area:{tax}:{suicide}"
    cache = board.cache
    if cache is not None and key in cache:
        return cache[key]  # type: ignore[return-value]
    locs = _onboard_locs(board.x_size, board.y_size)
    if tax == "NONE":
        b, w = area_masks(board, True, True, True, suicide)
        n = len(board.color)
        area = mask_to_bool(b, n)[locs].astype(np.int8)
        area[mask_to_bool(w, n)[locs]] = WHITE
    else:
        area = np.array(independent_life_area(board, False, True, suicide)[0], dtype=np.int8)[locs]
    if board.cache is None:
        board.cache = {}
    board.cache[key] = area
    return area


@dataclass(frozen=True)
class _Layout:
    """Where a board's points go in an ``nn_x`` x ``nn_y`` input buffer (per size, cached)."""

    locs: npt.NDArray[np.intp]  # loc of every on-board point, scan order
    pos: npt.NDArray[np.intp]  # its buffer position
    scan: npt.NDArray[np.intp]  # scan-order index of every loc (or -1)
    at: tuple[int, ...]  # buffer position of every loc (or -1)
    blank: F32  # [NUM_SPATIAL, nn_y * nn_x] zeros but channel 0 (on board)


@lru_cache(maxsize=64)
def _layout(x_size: int, y_size: int, nn_x: int, nn_y: int) -> _Layout:
    table, onboard = _pos_table(x_size, y_size, nn_x, nn_y)
    locs = _onboard_locs(x_size, y_size)
    scan = np.full(len(table), -1, dtype=np.intp)
    scan[locs] = np.arange(len(locs))
    blank = np.zeros((NUM_SPATIAL, nn_y * nn_x), dtype=np.float32)
    blank[0, onboard] = 1.0
    for a in (locs, scan, blank):
        a.flags.writeable = False
    return _Layout(locs, table[locs], scan, tuple(table.tolist()), blank)


def encode_v7(
    state: GameState,
    *,
    symmetry: int = 0,
    nn_x: int = 19,
    nn_y: int = 19,
    conservative_pass: bool = False,
    max_history: int = 1000,
    enable_passing_hacks: bool = False,
    playout_doubling_advantage: float = 0.0,
    draw_equivalent_wins_for_white: float = 0.5,
    pass_alive_suicide: bool = False,
    legal_out: npt.NDArray[np.bool_] | None = None,
) -> tuple[F32, F32]:
    """V7 inputs of ``state``: ``spatial`` float32 [22, nn_y, nn_x] and ``global`` float32 [19].

    ``pass_alive_suicide`` is the model header's ``preferPassAliveUnderSuicideRules`` flag.
    ``playout_doubling_advantage`` is from the side to move's view.

    ``legal_out``, bool ``[x_size * y_size + 1]``, receives the legal moves as the network's
    post-processing takes them (row-major board, pass last): the mask
    ``agent.network.postprocess.legal_mask_from_features`` recovers from these features (an
    empty point, not ko/superko-banned, next to an empty point, an own chain with two or more
    liberties (any own chain when suicide is legal) or an opponent chain in atari), made from the
    board arrays the encoding builds anyway (the search's evaluations).
    """
    board = state.board
    rules = state.rules
    pla = state.pla
    opp = 3 - pla
    x_size, y_size = board.x_size, board.y_size
    if x_size > nn_x or y_size > nn_y:
        raise ValueError(f"board {x_size}x{y_size} does not fit a {nn_x}x{nn_y} buffer")
    if legal_out is not None and legal_out.shape != (x_size * y_size + 1,):
        raise ValueError(f"legal_out: shape {legal_out.shape}, expected ({x_size * y_size + 1},)")
    lay = _layout(x_size, y_size, nn_x, nn_y)
    pos = lay.pos
    spatial = lay.blank.copy()
    glob = np.zeros(NUM_GLOBAL, dtype=np.float32)

    # stones and liberties, as arrays over the on-board points in scan order; the points of
    # the one-point channels (liberties, bans, history, ladders) are collected as flat indices
    # of ``spatial`` and set at once
    at = lay.at
    plane = nn_x * nn_y
    col = np.frombuffer(board.color, dtype=np.uint8)[lay.locs]
    own = col == pla
    theirs = col == opp
    spatial[1, pos] = own
    spatial[2, pos] = theirs
    ones: list[int] = []
    atari: list[int] = []
    stones = board.stones
    for h, lb in board.libs.items():
        n = len(lb)
        if n <= 3:
            base = (2 + n) * plane
            ones.extend([base + at[q] for q in stones[h]])
            if n == 1:
                atari.extend(stones[h])

    # ko and superko bans (main phase)
    bans = list(state.superko_banned())
    if board.ko_loc != 0:
        bans.append(board.ko_loc)
    base = 6 * plane
    ones.extend([base + at[q] for q in bans])

    # history
    self_komi = state.self_komi(pla, draw_equivalent_wins_for_white)
    area = _area(board, rules.scoring, rules.tax, rules.suicide or pass_alive_suicide)
    hist_len = 5
    suppress = False
    if state.pass_would_end_game(pla) and (
        conservative_pass
        or state.should_suppress_end_game_from_friendly_pass(pla)
        or (enable_passing_hacks and _game_end_would_not_be_win(area, board, pla, self_komi, rules.tax))
    ):
        hist_len = 0
        suppress = True
    elif state.is_game_finished or state.is_past_normal_phase_end:
        hist_len = 1
    hist_len = min(hist_len, max_history, state.turns_this_phase)
    moves = state.moves
    included = 0
    for k in range(1, hist_len + 1):
        loc, who = moves[-k]
        if who != (opp if k % 2 == 1 else pla):
            break
        included = k
        if loc == PASS_LOC:
            glob[k - 1] = 1.0
        else:
            ones.append((8 + k) * plane + at[loc])

    # ladders
    recent = state.recent
    scan = ladder_scan(board, recent[1])
    prev = board if included < 1 else state.recent[1]
    prev2 = prev if included < 2 else state.recent[2]
    scan1 = ladder_scan(prev, recent[2] if prev is recent[1] else None)
    scan2 = ladder_scan(prev2)
    for ch, points in (
        (14, scan.laddered),
        (15, scan1.laddered),
        (16, scan2.laddered),
        (17, scan.working[opp]),
    ):
        base = ch * plane
        ones.extend([base + at[q] for q in points])
    if ones:
        spatial.reshape(-1)[ones] = 1.0

    # areas
    if area is not None:
        spatial[18, pos] = area == pla
        spatial[19, pos] = area == opp

    glob[5:] = _globals(self_komi, x_size * y_size, rules, playout_doubling_advantage, state.has_button)
    if state.pass_would_end_phase(pla) and not suppress:
        glob[14] = 1.0

    if legal_out is not None:
        _legal(legal_out, col == EMPTY, own, theirs, atari, bans, rules.suicide, lay, x_size, y_size)

    out = spatial.reshape(NUM_SPATIAL, nn_y, nn_x)
    if symmetry:
        out = np.ascontiguousarray(apply_symmetry(out, symmetry))
    return out, glob


def _legal(
    out: npt.NDArray[np.bool_],
    empty: npt.NDArray[np.bool_],
    own: npt.NDArray[np.bool_],
    theirs: npt.NDArray[np.bool_],
    atari: list[int],
    bans: list[int],
    suicide: bool,
    lay: _Layout,
    x_size: int,
    y_size: int,
) -> None:
    """``encode_v7``'s ``legal_out`` from its board arrays (scan order; ``atari``: the locs of
    stones in chains with one liberty, ``bans``: ko and superko points)."""
    in_atari = np.zeros(len(empty), dtype=np.bool_)
    if atari:
        in_atari[lay.scan[atari]] = True
    helps = (empty | (own & (~in_atari | suicide)) | (theirs & in_atari)).reshape(y_size, x_size)
    near = np.zeros_like(helps)
    near[1:] |= helps[:-1]
    near[:-1] |= helps[1:]
    near[:, 1:] |= helps[:, :-1]
    near[:, :-1] |= helps[:, 1:]
    np.logical_and(empty, near.reshape(-1), out=out[:-1])
    if bans:
        out[lay.scan[bans]] = False
    out[-1] = True


@lru_cache(maxsize=256)
def _globals(self_komi: float, area: int, rules: Rules, pda: float, has_button: bool) -> F32:
    """Global inputs 5-18 but 14 (pass would end the phase), which depend on no history."""
    glob = np.zeros(NUM_GLOBAL - 5, dtype=np.float32)
    b_area = np.float32(area)
    komi32 = np.float32(
        min(
            max(np.float32(self_komi), -b_area - np.float32(KOMI_CLIP_RADIUS)),
            b_area + np.float32(KOMI_CLIP_RADIUS),
        )
    )
    glob[0] = komi32 / np.float32(20.0)
    if rules.ko in ("POSITIONAL", "SPIGHT"):
        glob[1], glob[2] = 1.0, 0.5
    elif rules.ko == "SITUATIONAL":
        glob[1], glob[2] = 1.0, -0.5
    glob[3] = 1.0 if rules.suicide else 0.0
    glob[4] = 1.0 if rules.scoring == "TERRITORY" else 0.0
    if rules.tax == "SEKI":
        glob[5] = 1.0
    elif rules.tax == "ALL":
        glob[5], glob[6] = 1.0, 1.0
    if pda != 0.0:
        glob[10] = 1.0
        glob[11] = np.float32(0.5 * pda)
    glob[12] = 1.0 if has_button else 0.0
    if rules.scoring == "AREA":
        glob[13] = _komi_wave(komi32, area)
    glob.flags.writeable = False
    return glob


def _komi_wave(k: np.float32, area: int) -> np.float32:
    two = np.float32(2.0)
    one = np.float32(1.0)
    if area % 2 == 0:
        floor_k = np.float32(np.floor(k / two)) * two
    else:
        floor_k = np.float32(np.floor((k - one) / two)) * two + one
    d = np.float32(min(max(np.float32(k - floor_k), np.float32(0.0)), two))
    if d < 0.5:
        return d
    if d < 1.5:
        return np.float32(one - d)
    return np.float32(d - two)


def _game_end_would_not_be_win(
    area: npt.NDArray[np.int8] | None, board: Board, pla: int, self_komi: float, tax: str
) -> bool:
    """``finalPhaseAndGameEndWouldNotBeWin`` for the passing hacks (area scoring only)."""
    if area is None:
        return False
    score = int(np.count_nonzero(area == pla)) - int(np.count_nonzero(area == 3 - pla))
    if tax == "ALL":
        _, wmb = independent_life_area(board, False, True, False)
        score += -2 * wmb if pla == 2 else 2 * wmb
    return score + self_komi <= 0


def legal_mask(state: GameState, nn_x: int = 19, nn_y: int = 19) -> npt.NDArray[np.bool_]:
    """Legal moves as a flat bool array of ``nn_x*nn_y + 1`` (last entry: pass, always legal)."""
    table, _ = _pos_table(state.board.x_size, state.board.y_size, nn_x, nn_y)
    mask = np.zeros(nn_x * nn_y + 1, dtype=np.bool_)
    legal = state.legal_moves(include_pass=False)
    if legal:
        mask[table[legal]] = True
    mask[-1] = True
    return mask
