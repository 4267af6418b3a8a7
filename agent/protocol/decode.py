"""Bytes to one JSON value, bounded: the first step of every request on every transport.

Stdin, the Unix socket, the WebSocket and MQTT all hand their raw message here once
(``decode``); nothing downstream parses the text again. The limits protect the process, not the
engine: a request is at most ``max_bytes`` long (a KataGo query with a long game is ~10 kB) and
nests at most ``MAX_NESTING`` levels (checked by a scan before the recursive decoder sees it).
``NaN`` and ``Infinity`` are not JSON and are refused, as KataGo's parser does.

A failure is an ``UndecodableRequest`` whose message is KataGo's general error text
(``[json.exception.parse_error] ... - could not parse input line as json request: ...``).
"""

from __future__ import annotations

import json
from typing import Any

from agent.errors import UndecodableRequest

MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_NESTING = 64
PARSE_ERROR = "[json.exception.parse_error]"
COULD_NOT_PARSE = "could not parse input line as json request"


def nesting_exceeds(text: str, limit: int) -> bool:
    """True when ``text`` opens more than ``limit`` arrays/objects inside each other."""
    depth = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode(data: str | bytes, max_bytes: int = MAX_REQUEST_BYTES, max_nesting: int = MAX_NESTING) -> Any:
    """The JSON value in ``data`` (UTF-8 when bytes); ``UndecodableRequest`` otherwise."""
    size = len(data)
    if size > max_bytes:
        unit = "bytes" if isinstance(data, bytes | bytearray) else "characters"
        raise UndecodableRequest(f"payload too large: {size} {unit}, limit {max_bytes}", "oversize")
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            where = f"{exc.reason} at byte {exc.start}"
            shown = bytes(data[:200]).decode("utf-8", "backslashreplace").strip()
            raise UndecodableRequest(
                f"{PARSE_ERROR} invalid UTF-8 ({where}) - {COULD_NOT_PARSE}: {shown}", "utf8", where
            ) from exc
    else:
        text = data
    if nesting_exceeds(text, max_nesting):
        raise UndecodableRequest(
            f"{PARSE_ERROR} nesting deeper than {max_nesting} levels - {COULD_NOT_PARSE}: {text[:200]}",
            "nesting",
        )
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise UndecodableRequest(f"{PARSE_ERROR} {exc} - {COULD_NOT_PARSE}: {text[:1000]}", "json") from exc


def not_an_object(value: Any) -> str:
    """KataGo's general error for valid JSON that is not an object."""
    return "Request line was valid json but was not an object, ignoring: " + json.dumps(value)[:1000]
