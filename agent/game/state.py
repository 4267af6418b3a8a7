"""Game state with KataGo's ``BoardHistory`` semantics (what the V7 features and legality need).

``GameState`` holds the current ``Board`` plus everything KataGo keeps beside it:

* the move history since the last *clear* (a move by the player who is not to move clears it:
  board kept, ``ko_loc`` dropped, history emptied, bonuses recomputed; KataGo's GTP and analysis
  engine both do this), and the last 6 boards (``recent[k]`` = the board ``k`` moves ago; before
  the history starts, the board at the clear);
* the ko-hash history for positional/situational superko and the ``superko_banned`` points;
* consecutive ending passes, the situations each colour passed from (Spight-style endings and
  simple-ko pass repetition), the button, the phase-end flags (territory scoring with KataGo's
  default ``preventCleanupPhase``: the game never enters the encore, it is only marked past the
  normal phase end);
* ``white_bonus`` (button half point, territory-scoring "chill" of one point per stone) and
  ``white_handicap_bonus`` (``whiteHandicapBonus`` rule; leading black moves count as handicap
  stones, like KataGo's ``assumeMultipleStartingBlackMovesAreHandicap``).

Boards are copy-on-write snapshots: ``play`` makes a new ``Board`` and never changes one that
a history slot (or another state) refers to, so ``copy()`` is cheap and search can clone freely.
"""

from __future__ import annotations

import random

import numpy as np

from agent.errors import IllegalMoveError
from agent.game.board import BLACK, EMPTY, WHITE, Board, opp
from agent.game.coords import NULL_LOC, PASS_LOC
from agent.game.rules import Rules

NUM_RECENT_BOARDS = 6
_MASK64 = (1 << 64) - 1
_rng = random.Random(0x5EED_C0DE)
PLAYER_HASH = (0, _rng.getrandbits(64), _rng.getrandbits(64))
KO_LOC_SALT = _rng.getrandbits(64)
del _rng


class GameState:
    """A position with history. ``pla`` is the side to move (``BLACK``/``WHITE``)."""

    __slots__ = (
        "_superko",
        "assume_multi_black_handicap",
        "board",
        "consecutive_ending_passes",
        "has_button",
        "hashes_before_pass",
        "initial_board",
        "initial_pla",
        "is_game_finished",
        "is_no_result",
        "is_past_normal_phase_end",
        "ko_hashes",
        "moves",
        "pla",
        "recent",
        "rules",
        "superko_active",
        "turns_this_phase",
        "was_played",
        "white_bonus",
        "white_handicap_bonus",
        "white_has_moved",
    )

    def __init__(
        self, board: Board, pla: int, rules: Rules, *, assume_multi_black_handicap: bool = True
    ) -> None:
        self.rules = rules
        self.board = board
        self.assume_multi_black_handicap = assume_multi_black_handicap
        self.clear(board, pla)

    @classmethod
    def empty(cls, x_size: int, y_size: int, rules: Rules, pla: int = BLACK) -> GameState:
        return cls(Board(x_size, y_size), pla, rules)

    # ------------------------------------------------------------------ history
    def clear(self, board: Board, pla: int) -> None:
        """KataGo's ``BoardHistory::clear`` followed by ``setAssumeMultipleStartingBlackMovesAreHandicap``."""
        rules = self.rules
        self.board = board
        self.pla = pla
        self.moves: list[tuple[int, int]] = []
        self.initial_board = board
        self.initial_pla = pla
        self.white_has_moved = False
        self.recent: tuple[Board, ...] = (board,) * NUM_RECENT_BOARDS
        self.consecutive_ending_passes = 0
        self.hashes_before_pass: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] = ((), (), ())
        self.turns_this_phase = 0
        self.white_bonus = 0.0
        self.has_button = rules.has_button
        self.is_past_normal_phase_end = False
        self.is_game_finished = False
        self.is_no_result = False
        mask = 0
        color = board.color
        nb = nw = 0
        for loc in board.geo.all_locs():
            c = color[loc]
            if c != EMPTY:
                mask |= 1 << loc
                if c == BLACK:
                    nb += 1
                else:
                    nw += 1
        self.was_played = mask
        self.ko_hashes: tuple[int, ...] = (self._ko_hash(board, pla),)
        self.superko_active = False
        self._superko: frozenset[int] | None = frozenset()
        if rules.scoring == "TERRITORY":
            self.white_bonus += nb - nw - (board.captured[WHITE] - board.captured[BLACK])
        self.white_handicap_bonus = float(self._compute_white_handicap_bonus())

    def copy(self) -> GameState:
        s = GameState.__new__(GameState)
        for name in GameState.__slots__:
            setattr(s, name, getattr(self, name))
        s.moves = self.moves[:]
        return s

    def _ko_hash(self, board: Board, pla: int) -> int:
        if self.rules.ko in ("SITUATIONAL", "SIMPLE"):
            return board.hash ^ PLAYER_HASH[pla]
        return board.hash

    def _num_handicap_stones(self) -> int:
        black_turns = 0
        if self.assume_multi_black_handicap:
            mv = self.moves
            for i, (loc, who) in enumerate(mv):
                if who != BLACK:
                    if i + 1 < len(mv) and mv[i + 1][1] != BLACK:
                        black_turns = 0
                        break
                    if loc == PASS_LOC:
                        continue
                    break
                if loc != PASS_LOC:
                    black_turns += 1
        b = self.initial_board
        nb = nw = 0
        for loc in b.geo.all_locs():
            c = b.color[loc]
            if c == BLACK:
                nb += 1
            elif c == WHITE:
                nw += 1
        if nw:
            return 0
        adv = nb + black_turns
        return 0 if adv <= 1 else adv

    def _compute_white_handicap_bonus(self) -> int:
        rule = self.rules.white_handicap_bonus
        if rule == "0":
            return 0
        n = self._num_handicap_stones()
        if rule == "N":
            return n
        return n - 1 if n > 1 else 0

    # ------------------------------------------------------------- pass logic
    def _new_consecutive_ending_passes(self) -> int:
        return 0 if self.rules.ko == "SPIGHT" else self.consecutive_ending_passes + 1

    def _would_be_spightlike_ending_pass(self, pla: int, ko_hash_before: int) -> bool:
        if self.rules.ko in ("SIMPLE", "SPIGHT"):
            return ko_hash_before in self.hashes_before_pass[pla]
        return False

    def pass_would_end_phase(self, pla: int | None = None) -> bool:
        p = self.pla if pla is None else pla
        return self._new_consecutive_ending_passes() >= 2 or self._would_be_spightlike_ending_pass(
            p, self._ko_hash(self.board, p)
        )

    def pass_would_end_game(self, pla: int | None = None) -> bool:
        return self.pass_would_end_phase(pla) and self.rules.scoring == "AREA"

    def should_suppress_end_game_from_friendly_pass(self, pla: int | None = None) -> bool:
        p = self.pla if pla is None else pla
        return (
            self.rules.friendly_pass_ok
            and self.rules.scoring == "AREA"
            and self._new_consecutive_ending_passes() == 2
            and not self._would_be_spightlike_ending_pass(p, self._ko_hash(self.board, p))
        )

    @property
    def is_over(self) -> bool:
        """The game has ended (area scoring) or passed its normal end (territory scoring)."""
        return self.is_game_finished or self.is_past_normal_phase_end

    # ---------------------------------------------------------------- legality
    def superko_banned(self) -> frozenset[int]:
        """Points the side to move may not play because of positional/situational superko."""
        if self._superko is None:
            self._superko = self._compute_superko()
        return self._superko

    def _compute_superko(self) -> frozenset[int]:
        rules = self.rules
        if not self.superko_active or rules.ko == "SIMPLE":
            return frozenset()
        board = self.board
        pla = self.pla
        color = board.color
        ko = board.ko_loc
        salt = PLAYER_HASH[opp(pla)] if rules.ko in ("SITUATIONAL", "SIMPLE") else 0
        suicide = rules.suicide
        was = self.was_played
        # A move can only recreate an earlier position if its point held a stone before, or if
        # it is a (multi-stone, so legal only where suicide is) suicide, whose point is the
        # single liberty of one of the mover's chains.
        cands: set[int] = set()
        m = was
        if m.bit_count() > 24:  # a long game: the empty points first, with numpy
            empty = np.frombuffer(color, dtype=np.uint8) == EMPTY
            m &= int.from_bytes(np.packbits(empty, bitorder="little").tobytes(), "little")
        while m:
            low = m & -m
            loc = low.bit_length() - 1
            m ^= low
            if color[loc] == EMPTY:
                cands.add(loc)
        if suicide:
            for head, lb in board.libs.items():
                if len(lb) == 1 and color[head] == pla:
                    cands |= lb
        if not cands:
            return frozenset()
        seen = set(self.ko_hashes)
        banned = []
        for loc in cands:
            if loc == ko or board.is_illegal_suicide(loc, pla, suicide):
                continue
            if not (was >> loc) & 1 and not board.is_suicide(loc, pla):
                continue
            if (board.hash_after_move(loc, pla) ^ salt) in seen:
                banned.append(loc)
        return frozenset(banned)

    def is_legal(self, loc: int, pla: int | None = None) -> bool:
        """KataGo's ``BoardHistory::isLegal`` (main phase): the policy's legal-move mask."""
        if pla is not None and pla != self.pla:
            return False
        if loc == PASS_LOC:
            return True
        board = self.board
        if loc == board.ko_loc or board.color[loc] != EMPTY:
            return False
        if board.is_illegal_suicide(loc, self.pla, self.rules.suicide):
            return False
        return loc not in self.superko_banned()

    def legal_moves(self, include_pass: bool = True) -> list[int]:
        board = self.board
        color = board.color
        ko = board.ko_loc
        pla = self.pla
        suicide = self.rules.suicide
        banned = self.superko_banned()
        out = [
            loc
            for loc in board.geo.all_locs()
            if color[loc] == EMPTY
            and loc != ko
            and not board.is_illegal_suicide(loc, pla, suicide)
            and loc not in banned
        ]
        if include_pass:
            out.append(PASS_LOC)
        return out

    def is_legal_tolerant(self, loc: int, pla: int) -> bool:
        """KataGo's ``isLegalTolerant`` (analysis-engine replay): empty point, not single-stone
        suicide; ko, superko and multi-stone suicide are tolerated."""
        if loc == PASS_LOC:
            return True
        if loc < 0 or loc >= len(self.board.color) or self.board.color[loc] != EMPTY:
            return False
        return not self.board.is_illegal_suicide(loc, pla, True)

    # ------------------------------------------------------------------- moves
    def play(self, loc: int) -> None:
        """Side to move plays ``loc`` (assumed legal: use ``is_legal`` / ``legal_moves``)."""
        self._make_move(loc, self.pla)

    def play_move(self, loc: int, pla: int, *, move_index: int | None = None) -> None:
        """Analysis-engine replay of one query move: a move by the player not to move first clears
        the history (and ``ko_loc``); the move must be tolerantly legal."""
        if pla != self.pla:
            b = self.board.copy()
            b.ko_loc = NULL_LOC
            self.clear(b, pla)
        if not self.is_legal_tolerant(loc, pla):
            idx = len(self.moves) if move_index is None else move_index
            raise IllegalMoveError(f"Illegal move {idx}: {self.board.geo.to_gtp(loc)}")
        self._make_move(loc, pla)

    def _make_move(self, loc: int, pla: int) -> None:
        rules = self.rules
        if self.is_game_finished or self.is_past_normal_phase_end:
            self.turns_this_phase = min(self.turns_this_phase, 1)
        self.is_game_finished = False
        self.is_past_normal_phase_end = False
        self.is_no_result = False
        spight_end = False
        board = self.board
        if loc != PASS_LOC:
            self.consecutive_ending_passes = 0
        elif self.has_button:
            self.has_button = False
            self.white_bonus += 0.5 if pla == WHITE else -0.5
            self.consecutive_ending_passes = 0
            self.hashes_before_pass = ((), (), ())
            self.ko_hashes = ()
        else:
            if rules.ko in ("SIMPLE", "SPIGHT"):
                self.ko_hashes = ()
            kh = self._ko_hash(board, pla)
            self.consecutive_ending_passes = self._new_consecutive_ending_passes()
            spight_end = self._would_be_spightlike_ending_pass(pla, kh)
            hb = list(self.hashes_before_pass)
            hb[pla] = (*hb[pla], kh)
            self.hashes_before_pass = (hb[0], hb[1], hb[2])
        nb = board.copy()
        nb.play(loc, pla)
        self.board = nb
        self.recent = (nb, *self.recent[: NUM_RECENT_BOARDS - 1])
        self.moves.append((loc, pla))
        nxt = opp(pla)
        self.pla = nxt
        self.turns_this_phase += 1
        kh_after = self._ko_hash(nb, nxt)
        self.ko_hashes = (*self.ko_hashes, kh_after)
        if loc != PASS_LOC:
            self.was_played |= 1 << loc
        self.superko_active = True
        self._superko = None if rules.ko != "SIMPLE" else frozenset()
        if rules.scoring == "TERRITORY" and loc != PASS_LOC:
            self.white_bonus += 1.0 if pla == BLACK else -1.0
        if pla == WHITE and loc != PASS_LOC:
            self.white_has_moved = True
        if (
            self.assume_multi_black_handicap
            and not self.white_has_moved
            and pla == BLACK
            and rules.white_handicap_bonus != "0"
        ):
            self.white_handicap_bonus = float(self._compute_white_handicap_bonus())
        if self.consecutive_ending_passes >= 2 or spight_end:
            if rules.scoring == "AREA":
                self.is_game_finished = True
                if self.has_button:
                    self.has_button = False
                    self.white_bonus += 0.5 if nxt == WHITE else -0.5
            else:
                self.is_past_normal_phase_end = True
                self.turns_this_phase = min(self.turns_this_phase, 1)
        if loc != PASS_LOC and rules.ko == "SIMPLE" and self.ko_hashes.count(kh_after) >= 3:
            self.is_no_result = True
            self.is_game_finished = True

    # ------------------------------------------------------------------ scores
    def self_komi(self, pla: int | None = None, draw_equivalent_wins_for_white: float = 0.5) -> float:
        """KataGo's ``currentSelfKomi``: komi plus bonuses, from ``pla``'s view."""
        p = self.pla if pla is None else pla
        integer_result = float(self.rules.komi).is_integer() != self.rules.has_button
        adj = (draw_equivalent_wins_for_white - 0.5) if integer_result else 0.0
        w = self.white_bonus + self.white_handicap_bonus + self.rules.komi + adj
        return w if p == WHITE else -w

    # ------------------------------------------------------------------ hashes
    def situation_hash(self) -> int:
        """Board + side to move (positional hash for repetition / transposition checks)."""
        return self.board.hash ^ PLAYER_HASH[self.pla]

    def nn_hash(self, *, conservative_pass: bool = False, max_history: int = 1000) -> int:
        """64-bit key for an NN-result cache: everything the V7 inputs depend on (stones, ko and
        superko bans, side to move, self komi, rules, button, the recent moves and boards the
        history features can see, and the pass/phase flags). Uses Python's ``hash`` of the rules,
        so keys are only comparable within one process (an in-memory NN cache)."""
        h = self.board.hash ^ PLAYER_HASH[self.pla]
        if self.board.ko_loc != NULL_LOC:
            h ^= (self.board.ko_loc * KO_LOC_SALT) & _MASK64
        n = min(5, self.turns_this_phase, len(self.moves), max_history)
        extra = (
            tuple(sorted(self.superko_banned())),
            self.self_komi(),
            self.rules,
            self.has_button,
            tuple(self.moves[len(self.moves) - n :]),
            self.recent[1].hash,
            self.recent[1].ko_loc,
            self.recent[2].hash,
            self.recent[2].ko_loc,
            n,
            self.is_game_finished,
            self.is_past_normal_phase_end,
            self.pass_would_end_phase(),
            self.should_suppress_end_game_from_friendly_pass(),
            conservative_pass,
        )
        return (h ^ (hash(extra) & _MASK64)) & _MASK64
