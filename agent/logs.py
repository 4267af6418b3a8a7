"""Logging set-up shared by every command: one format, level from flags or environment.

Log lines are data-safe: a message may carry text from a request (a query id, a topic, a
payload excerpt), so control characters in the record's *arguments* (newline, carriage return,
ESC, NUL, the C1 range and the Unicode line separators) are written as ``\\n``, ``\\x1b``,
``\\u2028``...: a query id cannot forge a log line or send terminal escapes to whoever reads the
log. The message template is the agent's own text: a multi-line report keeps its lines, each
continuation indented under the record, so no continuation can pass for a record of its own.
A message that is not a template with arguments (an exception object, a pre-formatted string) is
escaped whole. Tracebacks keep their lines. When stderr is a regular file (``install.sh
--no-systemd`` appends to ``agent.log``), its "others" permission bits are removed: the log is not
world-readable.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from types import MappingProxyType

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
ESCAPES = MappingProxyType(
    {
        code: _NAMED.get(chr(code), f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        for code in _CONTROLS
    }
)


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (one log record, one line)."""
    return text.translate(ESCAPES)


def _escaped(value: object) -> object:
    return escape_controls(value) if isinstance(value, str) else escape_controls(str(value))


class SafeFormatter(logging.Formatter):
    """The standard formatter, with control characters in payload-derived text escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = self._safe_message(record)
        return super().formatMessage(record)

    @staticmethod
    def _safe_message(record: logging.LogRecord) -> str:
        template, args = record.msg, record.args
        if not isinstance(template, str) or not args:
            return escape_controls(record.message)
        try:
            if isinstance(args, dict):
                text = template % {k: _escaped(v) for k, v in args.items()}
            else:
                text = template % tuple(
                    v if isinstance(v, int | float) and not isinstance(v, bool) else _escaped(v) for v in args
                )
        except (TypeError, ValueError, KeyError):  # a template the arguments do not fit
            return escape_controls(record.message)
        lines = [escape_controls(line) for line in text.split("\n")]
        return "\n    ".join(lines)


def _not_world_readable(stream: object) -> None:
    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and info.st_mode & 0o007:
            os.fchmod(fd, stat.S_IMODE(info.st_mode) & ~0o007)
    except (AttributeError, OSError, ValueError):  # not a file (a pipe, the journal, a test buffer)
        return


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Configure the root logger on stderr (stdout is reserved for protocol output).

    ``KATAGO_EDGE_LOG_LEVEL`` overrides the level derived from the flags.
    """
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 0 else logging.INFO)
    env = os.environ.get("KATAGO_EDGE_LOG_LEVEL")
    if env:
        level = (
            logging.getLevelName(env.upper()) if isinstance(logging.getLevelName(env.upper()), int) else level
        )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_katago_edge", False):
            root.removeHandler(handler)
    _not_world_readable(sys.stderr)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter(_FORMAT))
    handler._katago_edge = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
