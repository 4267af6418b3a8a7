"""Bytes to one bounded JSON value (``agent.protocol.decode``), the first step on every transport."""

from __future__ import annotations

import pytest

from agent.errors import UndecodableRequest
from agent.protocol.decode import decode, nesting_exceeds, not_an_object


def test_decode__text_and_bytes_give_the_same_value() -> None:
    assert decode('{"id": "a", "moves": []}') == {"id": "a", "moves": []}
    assert decode(b'{"id": "a", "moves": []}\n') == {"id": "a", "moves": []}
    assert decode("[1, 2]") == [1, 2]


@pytest.mark.parametrize(
    ("data", "kind", "start"),
    [
        (b"x" * 101, "oversize", "payload too large: 101 bytes, limit 100"),
        ("x" * 101, "oversize", "payload too large: 101 characters, limit 100"),
        (
            b'{"id": "\xff"}',
            "utf8",
            "[json.exception.parse_error] invalid UTF-8 (invalid start byte at byte 8)",
        ),
        ("[" * 65 + "]" * 65, "nesting", "[json.exception.parse_error] nesting deeper than 64 levels"),
        ('{"id": NaN}', "json", "[json.exception.parse_error] NaN is not valid JSON"),
        ("{nope", "json", "[json.exception.parse_error] Expecting property name"),
    ],
)
def test_decode__refusals_say_why(data: str | bytes, kind: str, start: str) -> None:
    with pytest.raises(UndecodableRequest) as info:
        decode(data, max_bytes=100 if kind == "oversize" else 1 << 20)
    assert info.value.kind == kind and str(info.value).startswith(start)
    assert "could not parse input line as json request" in str(info.value) or kind == "oversize"


def test_decode__utf8_detail_names_the_byte() -> None:
    with pytest.raises(UndecodableRequest) as info:
        decode(b"\xff{}")
    assert info.value.detail == "invalid start byte at byte 0"


def test_nesting_exceeds__brackets_inside_strings_do_not_count() -> None:
    assert nesting_exceeds("[[[]]]", 2) and not nesting_exceeds("[[[]]]", 3)
    assert not nesting_exceeds('["[[[[", "\\"[[[["]', 1)


def test_not_an_object__katago_text() -> None:
    assert not_an_object([1, 2]) == "Request line was valid json but was not an object, ignoring: [1, 2]"
