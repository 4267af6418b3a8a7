"""SGF (FF[4]) reading and writing for Go games.

Read: the main line only (first child at every branch). Root properties ``SZ`` (``19`` or
rectangular ``13:9`` = columns:rows), ``KM``, ``RU`` (KataGo rules names, plus common SGF
spellings: ``Japanese``, ``Chinese``, ``AGA``, ``NZ``...), ``HA``, setup ``AB``/``AW``/``AE``,
``PL``; moves ``B``/``W`` with pass as ``[]`` or ``[tt]`` (on boards up to 19x19). Point ``aa``
is the top-left corner: first letter = column, second = row from the top.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.errors import AgentError, RulesError, SgfError
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


class _Parser:
    def __init__(self, text: str) -> None:
        self.t = text
        self.i = 0

    def _ws(self) -> None:
        t = self.t
        while self.i < len(t) and t[self.i].isspace():
            self.i += 1

    def _peek(self) -> str:
        self._ws()
        return self.t[self.i] if self.i < len(self.t) else ""

    def _expect(self, ch: str) -> None:
        if self._peek() != ch:
            raise SgfError(f"SGF: expected {ch!r} at offset {self.i}")
        self.i += 1

    def tree(self) -> list[list[dict[str, list[str]]]]:
        """One game tree -> the main line as a list of nodes (property dicts)."""
        self._expect("(")
        nodes: list[dict[str, list[str]]] = []
        while self._peek() == ";":
            self.i += 1
            nodes.append(self._node())
        first = True
        while self._peek() == "(":
            sub = self.tree()
            if first:
                nodes.extend(sub[0])
                first = False
        self._expect(")")
        return [nodes]

    def _node(self) -> dict[str, list[str]]:
        props: dict[str, list[str]] = {}
        while True:
            self._ws()
            j = self.i
            t = self.t
            while j < len(t) and (t[j].isalpha()):
                j += 1
            if j == self.i:
                return props
            ident = "".join(ch for ch in t[self.i : j] if ch.isupper())
            self.i = j
            values = []
            while self._peek() == "[":
                self.i += 1
                buf = []
                while True:
                    if self.i >= len(t):
                        raise SgfError("SGF: unterminated property value")
                    ch = t[self.i]
                    if ch == "\\" and self.i + 1 < len(t):
                        buf.append(t[self.i + 1])
                        self.i += 2
                        continue
                    if ch == "]":
                        self.i += 1
                        break
                    buf.append(ch)
                    self.i += 1
                values.append("".join(buf))
            if not values:
                raise SgfError(f"SGF: property {ident} without a value")
            props.setdefault(ident, []).extend(values)


def _point(value: str, x_size: int, y_size: int, allow_pass: bool) -> int:
    g = Geometry(x_size, y_size)
    v = value.strip()
    if v == "" or (v == "tt" and x_size <= 19 and y_size <= 19):
        if allow_pass:
            return PASS_LOC
        raise SgfError(f"SGF: pass is not a setup point: [{value}]")
    if len(v) != 2 or not v.isalpha():
        raise SgfError(f"SGF: bad point [{value}]")
    x, y = (ord(c) - ord("a") if c.islower() else ord(c) - ord("A") + 26 for c in v)
    if not g.on_board(x, y):
        raise SgfError(f"SGF: point [{value}] is off the {x_size}x{y_size} board")
    return g.loc(x, y)


def _expand(value: str, x_size: int, y_size: int) -> list[int]:
    """A point or a compressed rectangle ``aa:cc``."""
    if ":" not in value:
        return [_point(value, x_size, y_size, False)]
    a, b = value.split(":", 1)
    g = Geometry(x_size, y_size)
    x0, y0 = g.xy(_point(a, x_size, y_size, False))
    x1, y1 = g.xy(_point(b, x_size, y_size, False))
    return [
        g.loc(x, y) for y in range(min(y0, y1), max(y0, y1) + 1) for x in range(min(x0, x1), max(x0, x1) + 1)
    ]


def parse_sgf(text: str) -> SgfGame:
    """Parse the main line of the first game in ``text``. Raises ``SgfError``."""
    start = text.find("(")
    if start < 0:
        raise SgfError("SGF: no game tree found")
    p = _Parser(text)
    p.i = start
    nodes = p.tree()[0]
    if not nodes:
        raise SgfError("SGF: empty game tree")
    root = nodes[0]
    game = SgfGame(properties=root)
    if "SZ" in root:
        sz = root["SZ"][0].strip()
        try:
            if ":" in sz:
                xs, ys = sz.split(":", 1)
                game.x_size, game.y_size = int(xs), int(ys)
            else:
                game.x_size = game.y_size = int(sz)
            Geometry(game.x_size, game.y_size)
        except (ValueError, AgentError) as exc:
            raise SgfError(f"SGF: bad board size SZ[{sz}]") from exc
    if "KM" in root:
        try:
            game.komi = float(root["KM"][0])
        except ValueError as exc:
            raise SgfError(f"SGF: bad komi KM[{root['KM'][0]}]") from exc
    if "RU" in root:
        game.rules_text = root["RU"][0].strip()
    if "HA" in root:
        try:
            game.handicap = int(root["HA"][0])
        except ValueError as exc:
            raise SgfError(f"SGF: bad handicap HA[{root['HA'][0]}]") from exc
    colors: dict[int, int] = {}
    for node in nodes:
        has_setup = any(k in node for k in ("AB", "AW", "AE"))
        if has_setup and game.moves:
            raise SgfError("SGF: setup stones (AB/AW/AE) after the first move are not supported")
        for key, col in (("AB", BLACK), ("AW", WHITE), ("AE", EMPTY)):
            for v in node.get(key, []):
                for loc in _expand(v, game.x_size, game.y_size):
                    colors[loc] = col
        if "PL" in node and not game.moves:
            pl = node["PL"][0].strip().upper()
            if pl not in ("B", "W"):
                raise SgfError(f"SGF: bad player PL[{pl}]")
            game.first_player = BLACK if pl == "B" else WHITE
        for key, col in (("B", BLACK), ("W", WHITE)):
            for v in node.get(key, []):
                game.moves.append((_point(v, game.x_size, game.y_size, True), col))
                game.node_comments.append(" ".join(node.get("C", [])))
    game.setup = [(loc, c) for loc, c in colors.items() if c != EMPTY]
    return game


_SGF_RULE_ALIASES = {"jp": "japanese", "cn": "chinese", "kr": "korean", "ogs": "chinese-ogs"}


def sgf_rules(game: SgfGame, default: str = "tromp-taylor") -> Rules:
    """Rules named by ``RU`` (KataGo names and common SGF spellings), komi from ``KM``."""
    text = game.rules_text or default
    name = _SGF_RULE_ALIASES.get(text.strip().lower(), text)
    try:
        rules = parse_rules(name)
    except RulesError as exc:
        raise SgfError(f"SGF: unknown rules RU[{text}]") from exc
    return rules.with_komi(game.komi) if game.komi is not None else rules


def state_from_sgf(game: SgfGame, num_moves: int | None = None, rules: Rules | None = None) -> GameState:
    """Replay the first ``num_moves`` moves (all by default) like the analysis engine would."""
    from agent.game.board import Board

    r = rules if rules is not None else sgf_rules(game)
    board = Board(game.x_size, game.y_size)
    for loc, c in game.setup:
        board.color[loc] = c
    board.rebuild()
    moves = game.moves if num_moves is None else game.moves[:num_moves]
    if game.first_player is not None:
        first = game.first_player
    elif moves:
        first = moves[0][1]
    else:
        nb = sum(1 for _, c in game.setup if c == BLACK)
        nw = sum(1 for _, c in game.setup if c == WHITE)
        first = WHITE if nw == 0 and nb >= 2 else BLACK
    state = GameState(board, first, r)
    for i, (loc, pla) in enumerate(moves):
        state.play_move(loc, pla, move_index=i)
    return state


def _sgf_point(loc: int, g: Geometry) -> str:
    if loc == PASS_LOC:
        return ""
    x, y = g.xy(loc)
    return "abcdefghijklmnopqrstuvwxyz"[x] + "abcdefghijklmnopqrstuvwxyz"[y]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("]", "\\]")


def write_sgf(
    x_size: int,
    y_size: int,
    moves: list[tuple[int, int]],
    *,
    komi: float | None = None,
    rules: str | None = None,
    setup: list[tuple[int, int]] | None = None,
    first_player: int | None = None,
    properties: dict[str, str] | None = None,
) -> str:
    """A minimal FF[4] SGF of a main line (passes written as ``[]``); ``properties`` adds root
    properties such as ``PB``, ``PW``, ``RE``, ``C`` (values escaped)."""
    g = Geometry(x_size, y_size)
    size = str(x_size) if x_size == y_size else f"{x_size}:{y_size}"
    parts = [f"(;FF[4]GM[1]CA[UTF-8]SZ[{size}]"]
    for key, value in (properties or {}).items():
        parts.append(f"{key}[{_escape(value)}]")
    if komi is not None:
        parts.append(f"KM[{komi:g}]")
    if rules is not None:
        parts.append(f"RU[{rules}]")
    if first_player is not None:
        parts.append(f"PL[{'B' if first_player == BLACK else 'W'}]")
    for key, col in (("AB", BLACK), ("AW", WHITE)):
        pts = [_sgf_point(loc, g) for loc, c in (setup or []) if c == col]
        if pts:
            parts.append(key + "".join(f"[{p}]" for p in pts))
    for loc, col in moves:
        parts.append(f"\n;{'B' if col == BLACK else 'W'}[{_sgf_point(loc, g)}]")
    parts.append(")\n")
    return "".join(parts)
