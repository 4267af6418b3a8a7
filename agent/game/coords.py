"""Board geometry and GTP coordinates.

Three coordinate systems meet here:

=============  ==========================================================================
``(x, y)``     0-based; ``x`` left to right (GTP letters A,B,..,H,J,..), ``y`` **top to
               bottom**, so GTP row number = ``y_size - y``. ``D4`` on 19x19 is ``(3, 15)``.
``loc``        index into the padded board arrays (KataGo's layout): ``stride = x_size + 1``,
               ``loc = (x + 1) + (y + 1) * stride``. Neighbours are ``loc - stride`` (up),
               ``loc - 1`` (left), ``loc + 1`` (right), ``loc + stride`` (down); the padding
               holds off-board sentinels. ``PASS_LOC`` and ``NULL_LOC`` are never board points.
``pos``        NN buffer index ``y * nn_x + x``; pass is ``nn_x * nn_y``.
=============  ==========================================================================

GTP columns skip the letter I; past Z (25 columns) KataGo continues with two letters
(``AA``, ``AB``, ...). A point may also be written ``(x,y)`` with 0-based, top-origin numbers,
as KataGo's ``Location::tryOfString`` accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from agent.errors import CoordinateError

NULL_LOC = 0
PASS_LOC = 1
COLUMNS = "ABCDEFGHJKLMNOPQRSTUVWXYZ"
MIN_SIZE = 2
MAX_SIZE = 19


@dataclass(frozen=True)
class Geometry:
    """Board dimensions plus the padded-array helpers built from them."""

    x_size: int
    y_size: int

    def __post_init__(self) -> None:
        for name, v in (("x", self.x_size), ("y", self.y_size)):
            if not MIN_SIZE <= v <= MAX_SIZE:
                raise CoordinateError(f"board {name} size {v} outside {MIN_SIZE}..{MAX_SIZE}")

    @property
    def stride(self) -> int:
        return self.x_size + 1

    @property
    def arr_size(self) -> int:
        return (self.x_size + 1) * (self.y_size + 2) + 1

    @property
    def area(self) -> int:
        return self.x_size * self.y_size

    def loc(self, x: int, y: int) -> int:
        return (x + 1) + (y + 1) * (self.x_size + 1)

    def xy(self, loc: int) -> tuple[int, int]:
        s = self.x_size + 1
        return loc % s - 1, loc // s - 1

    def on_board(self, x: int, y: int) -> bool:
        return 0 <= x < self.x_size and 0 <= y < self.y_size

    def all_locs(self) -> tuple[int, ...]:
        """Every board point, row by row (y ascending, x ascending): KataGo's scan order."""
        return _all_locs(self.x_size, self.y_size)

    def loc_to_pos(self, loc: int, nn_x: int = 19, nn_y: int = 19) -> int:
        """Policy / NN-buffer index of ``loc`` (pass -> ``nn_x * nn_y``)."""
        if loc == PASS_LOC:
            return nn_x * nn_y
        x, y = self.xy(loc)
        return y * nn_x + x

    def pos_to_loc(self, pos: int, nn_x: int = 19, nn_y: int = 19) -> int:
        if pos == nn_x * nn_y:
            return PASS_LOC
        y, x = divmod(pos, nn_x)
        if not self.on_board(x, y):
            raise CoordinateError(f"buffer position {pos} is off the {self.x_size}x{self.y_size} board")
        return self.loc(x, y)

    def to_gtp(self, loc: int) -> str:
        return loc_to_gtp(loc, self.x_size, self.y_size)

    def from_gtp(self, text: str) -> int:
        return gtp_to_loc(text, self.x_size, self.y_size)


@lru_cache(maxsize=512)
def _all_locs(x_size: int, y_size: int) -> tuple[int, ...]:
    s = x_size + 1
    return tuple((x + 1) + (y + 1) * s for y in range(y_size) for x in range(x_size))


def column_name(x: int) -> str:
    """GTP column letters for 0-based column ``x`` (A..Z without I, then AA, AB, ...)."""
    if x < len(COLUMNS):
        return COLUMNS[x]
    return COLUMNS[x // len(COLUMNS) - 1] + COLUMNS[x % len(COLUMNS)]


def loc_to_gtp(loc: int, x_size: int, y_size: int) -> str:
    if loc == PASS_LOC:
        return "pass"
    if loc == NULL_LOC:
        return "null"
    s = x_size + 1
    x, y = loc % s - 1, loc // s - 1
    return f"{column_name(x)}{y_size - y}"


def parse_gtp_xy(text: str, x_size: int, y_size: int) -> tuple[int, int] | None:
    """Parse a GTP vertex to ``(x, y)``; ``None`` for pass. Raises ``CoordinateError``."""
    s = text.strip()
    low = s.lower()
    if low == "pass":
        return None
    if len(s) >= 2 and s[0] == "(" and s[-1] == ")":
        parts = s[1:-1].split(",")
        try:
            x, y = (int(p.strip()) for p in parts)
        except ValueError as exc:
            raise CoordinateError(f"Could not parse board location: {text}") from exc
        if not (0 <= x < x_size and 0 <= y < y_size):
            raise CoordinateError(f"Could not parse board location: {text}")
        return x, y
    up = s.upper()
    i = 0
    while i < len(up) and up[i].isalpha():
        i += 1
    letters, digits = up[:i], up[i:]
    if not letters or not digits.isdigit() or len(letters) > 2:
        raise CoordinateError(f"Could not parse board location: {text}")
    try:
        if len(letters) == 1:
            x = COLUMNS.index(letters)
        else:
            x = (COLUMNS.index(letters[0]) + 1) * len(COLUMNS) + COLUMNS.index(letters[1])
    except ValueError as exc:
        raise CoordinateError(f"Could not parse board location: {text}") from exc
    row = int(digits)
    y = y_size - row
    if not (0 <= x < x_size and 0 <= y < y_size):
        raise CoordinateError(f"Could not parse board location: {text}")
    return x, y


def gtp_to_loc(text: str, x_size: int, y_size: int) -> int:
    """Parse a GTP vertex (``D4``, ``pass``, ``(3,15)``) to a padded-array ``loc``."""
    xy = parse_gtp_xy(text, x_size, y_size)
    if xy is None:
        return PASS_LOC
    return (xy[0] + 1) + (xy[1] + 1) * (x_size + 1)
