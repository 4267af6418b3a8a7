"""Playing strength of a converted network against its FP32 reference (``verify --games N``).

Verification compares single positions; this module measures what a quantization costs in play.
The converted network and the reference play a match with the same search and the same fixed
visit count (a :class:`Player` each, made by the caller, e.g. ``agent.search.player``):

* **openings** are varied (:mod:`agent.models.openings`: prefixes of real games, or a few moves
  sampled from the reference network's policy), and each is played twice with the colours
  swapped, so colour and opening advantages cancel;
* **resignation** is conservative: a player resigns only after ``resign_turns`` consecutive own
  moves whose search gives it a winrate below ``resign_below`` while its opponent's last search
  agreed (above ``1 - resign_below``); ``resign_below = 0`` turns it off;
* games otherwise end by two passes (Tromp-Taylor rules by default: dead stones are captured
  before passing, so the final position scores as it stands) and are **adjudicated by the rules
  engine** (area scoring, :func:`agent.game.area.calculate_area`, plus komi); a game that reaches
  ``max_moves`` is scored the same way.

Statistics (score ``s`` = (wins + draws / 2) / games of the converted network):

* Elo difference ``400 * log10(s / (1 - s))`` (logistic model), and a 95 % interval from the
  normal approximation of the score: per-game variance ``σ² = (W(1-s)² + D(½-s)² + L s²) / N``,
  ``s ± 1.96 σ / √N`` mapped through the same formula (cutechess-cli / fishtest);
* a sequential probability ratio test (SPRT) of H0: Elo = ``elo0`` against H1: Elo = ``elo1``
  with the generalised-SPRT normal approximation of its log-likelihood ratio,
  ``LLR = N (s1 - s0)(2s - s0 - s1) / (2σ²)`` with ``s_i`` the scores of ``elo_i``; it stops when
  LLR leaves ``[log(β/(1-α)), log((1-β)/α)]``. The default tests "loses at most 20 Elo"
  (``elo0 = -20``) against "loses at least 50 Elo" (``elo1 = -50``), α = β = 0.05. A one-sided
  record (no win or no loss yet) has σ = 0; its variance is then taken with half a win and half a
  loss added, so a streak decides only after several games.

The match stops early, after a complete pair of games, once the SPRT has decided.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Protocol

from agent.game.area import calculate_area
from agent.game.board import BLACK, WHITE, Board
from agent.game.rules import Rules, parse_rules
from agent.game.sgf import write_sgf
from agent.game.state import GameState
from agent.models.openings import Opening

logger = logging.getLogger(__name__)

ELO0, ELO1 = -20.0, -50.0  # H0: loses at most 20 Elo; H1: loses at least 50
ALPHA = BETA = 0.05


# --- arithmetic ---------------------------------------------------------------------------------


def elo_from_score(score: float) -> float:
    """Elo difference of an expected score (0.5 -> 0, 0.64 -> +100; 0 and 1 -> -inf / +inf)."""
    if score <= 0.0:
        return -math.inf
    if score >= 1.0:
        return math.inf
    return -400.0 * math.log10(1.0 / score - 1.0)


def score_from_elo(elo: float) -> float:
    """Expected score of an Elo difference (the inverse of :func:`elo_from_score`)."""
    return 1.0 / (1.0 + 10.0 ** (-elo / 400.0))


def _score_and_variance(wins: float, draws: float, losses: float) -> tuple[float, float]:
    n = wins + draws + losses
    s = (wins + 0.5 * draws) / n
    var = (wins * (1 - s) ** 2 + draws * (0.5 - s) ** 2 + losses * s**2) / n
    return s, var


@dataclass(frozen=True)
class EloEstimate:
    games: int
    wins: int
    draws: int
    losses: int
    score: float
    elo: float
    low: float  # interval bounds (Elo)
    high: float
    confidence: float

    def text(self) -> str:
        return f"{_signed(self.elo)} Elo, {self.confidence:.0%} interval [{_signed(self.low)}, {_signed(self.high)}]"


def _signed(elo: float) -> str:
    return f"{round(elo):+d}" if math.isfinite(elo) else ("+inf" if elo > 0 else "-inf")


def elo_estimate(wins: int, draws: int, losses: int, confidence: float = 0.95) -> EloEstimate:
    """Elo difference and its interval from a win/draw/loss record (module docstring)."""
    n = wins + draws + losses
    if n == 0:
        return EloEstimate(0, 0, 0, 0, 0.5, 0.0, -math.inf, math.inf, confidence)
    s, var = _score_and_variance(wins, draws, losses)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    half = z * math.sqrt(var / n)
    return EloEstimate(
        n,
        wins,
        draws,
        losses,
        s,
        elo_from_score(s),
        elo_from_score(s - half),
        elo_from_score(s + half),
        confidence,
    )


def sprt_bounds(alpha: float = ALPHA, beta: float = BETA) -> tuple[float, float]:
    """(lower, upper) LLR bounds: below the lower one H0 is accepted, above the upper one H1."""
    return math.log(beta / (1 - alpha)), math.log((1 - beta) / alpha)


def sprt_llr(wins: int, draws: int, losses: int, elo0: float = ELO0, elo1: float = ELO1) -> float:
    """Log-likelihood ratio of H1 (``elo1``) over H0 (``elo0``), normal approximation."""
    n = wins + draws + losses
    if n == 0:
        return 0.0
    s, var = _score_and_variance(wins, draws, losses)
    if var <= 0.0:
        _, var = _score_and_variance(wins + 0.5, draws, losses + 0.5)
    s0, s1 = score_from_elo(elo0), score_from_elo(elo1)
    return n * (s1 - s0) * (2 * s - s0 - s1) / (2 * var)


@dataclass(frozen=True)
class SprtResult:
    llr: float
    lower: float
    upper: float
    elo0: float
    elo1: float
    alpha: float
    beta: float

    @property
    def verdict(self) -> str:
        """``"H0"`` (loss within ``-elo0``), ``"H1"`` (loss at least ``-elo1``) or ``"undecided"``."""
        if self.llr <= self.lower:
            return "H0"
        if self.llr >= self.upper:
            return "H1"
        return "undecided"

    def text(self) -> str:
        what = {
            "H0": f"H0 accepted: loses at most {-self.elo0:g} Elo",
            "H1": f"H1 accepted: loses at least {-self.elo1:g} Elo",
            "undecided": "undecided",
        }[self.verdict]
        return f"SPRT LLR {self.llr:.2f} in [{self.lower:.2f}, {self.upper:.2f}]: {what}"


def sprt(
    wins: int,
    draws: int,
    losses: int,
    elo0: float = ELO0,
    elo1: float = ELO1,
    alpha: float = ALPHA,
    beta: float = BETA,
) -> SprtResult:
    lower, upper = sprt_bounds(alpha, beta)
    return SprtResult(sprt_llr(wins, draws, losses, elo0, elo1), lower, upper, elo0, elo1, alpha, beta)


def sprt_stop(results: Sequence[float], elo0: float = ELO0, elo1: float = ELO1) -> tuple[int, SprtResult]:
    """Feed a stream of game results (1, 0.5, 0 for the tested side) to the SPRT, checking after
    every pair of games; the number of games played when it stopped, and its state then."""
    wins = draws = losses = 0
    state = sprt(0, 0, 0, elo0, elo1)
    for i, r in enumerate(results, 1):
        wins += r == 1.0
        draws += r == 0.5
        losses += r == 0.0
        if i % 2 == 0:
            state = sprt(wins, draws, losses, elo0, elo1)
            if state.verdict != "undecided":
                return i, state
    return len(results), sprt(wins, draws, losses, elo0, elo1)


# --- games --------------------------------------------------------------------------------------


class Choice(Protocol):
    @property
    def loc(self) -> int: ...
    @property
    def winrate(self) -> float: ...


class Player(Protocol):
    def new_game(self) -> None:
        """Forget everything from earlier games (caches), so that games are independent."""

    def choose(self, state: GameState) -> Choice: ...


@dataclass
class GameRecord:
    opening: Opening
    black: str
    white: str
    moves: list[tuple[int, int]] = field(default_factory=list)  # every move, opening included
    winner: int | None = None  # BLACK, WHITE, None for a draw
    white_score: float | None = None  # area score minus komi (None after a resignation)
    end: str = ""  # "passes", "resignation", "move limit"

    @property
    def result(self) -> str:
        """SGF ``RE`` text: ``B+R``, ``W+3.5``, ``0`` (draw)."""
        if self.winner is None:
            return "0"
        side = "B" if self.winner == BLACK else "W"
        if self.white_score is None:
            return f"{side}+R"
        return f"{side}+{abs(self.white_score):g}"


def area_white_score(state: GameState) -> float:
    """White minus Black under area scoring (stones + single-colour regions) plus komi."""
    board = state.board
    area = calculate_area(board, True, True, True, state.rules.suicide)
    diff = sum(1 if area[loc] == WHITE else -1 if area[loc] == BLACK else 0 for loc in board.geo.all_locs())
    return diff + state.self_komi(WHITE)


def play_game(
    black: Player,
    white: Player,
    opening: Opening,
    *,
    rules: Rules,
    names: tuple[str, str],
    max_moves: int | None = None,
    resign_below: float = 0.02,
    resign_turns: int = 4,
) -> GameRecord:
    """One game from ``opening`` (module docstring); ``names`` = (black's, white's)."""
    state = GameState(Board(opening.x_size, opening.y_size), BLACK, rules)
    record = GameRecord(opening, *names)
    for loc, colour in opening.moves:
        state.play_move(loc, colour)
        record.moves.append((loc, colour))
    limit = max_moves if max_moves is not None else 3 * opening.x_size * opening.y_size
    low_turns = {BLACK: 0, WHITE: 0}
    last_winrate = {BLACK: 0.5, WHITE: 0.5}
    while not state.is_over and len(record.moves) < limit:
        pla = state.pla
        choice = (black if pla == BLACK else white).choose(state)
        opp = WHITE if pla == BLACK else BLACK
        last_winrate[pla] = choice.winrate
        low_turns[pla] = low_turns[pla] + 1 if choice.winrate < resign_below else 0
        if resign_below > 0 and low_turns[pla] >= resign_turns and last_winrate[opp] > 1 - resign_below:
            record.winner, record.end = opp, "resignation"
            return record
        state.play(choice.loc)
        record.moves.append((choice.loc, pla))
    record.end = "passes" if state.is_over else "move limit"
    record.white_score = area_white_score(state)
    record.winner = WHITE if record.white_score > 0 else BLACK if record.white_score < 0 else None
    return record


def game_sgf(record: GameRecord, rules_name: str, komi: float, comment: str = "") -> str:
    props = {"PB": record.black, "PW": record.white, "RE": record.result, "GN": record.opening.name}
    if comment:
        props["C"] = comment
    return write_sgf(
        record.opening.x_size,
        record.opening.y_size,
        record.moves,
        komi=komi,
        rules=rules_name,
        properties=props,
    )


# --- match --------------------------------------------------------------------------------------


@dataclass
class MatchResult:
    results: list[float] = field(default_factory=list)  # converted network's score per game
    ends: dict[str, int] = field(default_factory=dict)
    sgf_files: list[str] = field(default_factory=list)

    @property
    def record(self) -> tuple[int, int, int]:
        r = self.results
        return sum(x == 1.0 for x in r), sum(x == 0.5 for x in r), sum(x == 0.0 for x in r)

    def elo(self) -> EloEstimate:
        return elo_estimate(*self.record)

    def sprt(self) -> SprtResult:
        return sprt(*self.record)

    def to_json(self) -> dict[str, Any]:
        est, test = self.elo(), self.sprt()
        return {
            "games": est.games,
            "wins": est.wins,
            "draws": est.draws,
            "losses": est.losses,
            "score": round(est.score, 4),
            "elo": _rounded(est.elo),
            "elo_interval": [_rounded(est.low), _rounded(est.high)],
            "confidence": est.confidence,
            "ends": dict(self.ends),
            "sprt": {
                "elo0": test.elo0,
                "elo1": test.elo1,
                "alpha": test.alpha,
                "beta": test.beta,
                "llr": round(test.llr, 3),
                "bounds": [round(test.lower, 3), round(test.upper, 3)],
                "verdict": test.verdict,
            },
        }


def _rounded(x: float) -> float | str:
    return round(x, 1) + 0.0 if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def play_match(
    converted: Player,
    reference: Player,
    openings: Sequence[Opening],
    games: int,
    *,
    rules_name: str = "tromp-taylor",
    sgf_dir: Path | None = None,
    stop_early: bool = True,
    on_game: Callable[[MatchResult, GameRecord], None] | None = None,
    resign_below: float = 0.02,
    names: tuple[str, str] = ("converted", "reference"),
) -> MatchResult:
    """``games`` games (opening ``g // 2``, each played with both colours, the converted network
    Black first in even pairs and White first in odd ones, every game from empty caches); stops
    after a pair once the SPRT has decided, when ``stop_early``. Writes each game to ``sgf_dir``."""
    rules = parse_rules(rules_name)
    komi = rules.komi
    match = MatchResult()
    if sgf_dir is not None:
        sgf_dir.mkdir(parents=True, exist_ok=True)
    for g in range(games):
        opening = openings[(g // 2) % len(openings)]
        conv_black = (g + g // 2) % 2 == 0  # pairs alternate which colour the converted net takes first
        converted.new_game()
        reference.new_game()
        black, white = (converted, reference) if conv_black else (reference, converted)
        record = play_game(
            black,
            white,
            opening,
            rules=rules,
            names=names if conv_black else names[::-1],
            resign_below=resign_below,
        )
        conv_colour = BLACK if conv_black else WHITE
        match.results.append(0.5 if record.winner is None else float(record.winner == conv_colour))
        match.ends[record.end] = match.ends.get(record.end, 0) + 1
        if sgf_dir is not None:
            path = sgf_dir / f"game-{g + 1:04d}.sgf"
            path.write_text(game_sgf(record, rules_name, komi, f"game {g + 1}, opening {opening.name}"))
            match.sgf_files.append(path.name)
        logger.debug("game %d: %s (%s, %d moves)", g + 1, record.result, record.end, len(record.moves))
        if on_game is not None:
            on_game(match, record)
        if stop_early and g % 2 == 1 and match.sprt().verdict != "undecided":
            break
    return match
