"""The JSON form of a dataclass record, shared by every ``to_dict``/``to_json`` that lists its fields."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import fields
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Record(Protocol):
    """A value with its own JSON form (a nested record)."""

    def to_dict(self) -> dict[str, Any]: ...


def field_dict(
    record: Any, *, rounded: Mapping[str, int] | None = None, skip: Collection[str] = ()
) -> dict[str, Any]:
    """``record``'s dataclass fields by name, in declaration order, less those in ``skip``.

    A field named in ``rounded`` is rounded to that many decimals; a field whose value has a
    ``to_dict`` (a :class:`Record`) is given as that. Values are not copied (unlike ``dataclasses.asdict``).
    """
    places = rounded or {}
    out = {}
    for f in fields(record):
        if f.name in skip:
            continue
        value = getattr(record, f.name)
        if f.name in places:
            value = round(value, places[f.name])
        elif isinstance(value, Record):
            value = value.to_dict()
        out[f.name] = value
    return out
