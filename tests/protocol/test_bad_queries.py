"""200+ bad requests get KataGo-shaped errors, and good queries between them are still served."""

from __future__ import annotations

import json

import pytest
from bad_queries import BASE, corpus
from protocol_helpers import Collector, make_engine

from agent.protocol.service import AnalysisService


def _check(resp: list[dict[str, object]], expected: tuple[object, ...], line: object) -> None:
    errors = [r for r in resp if "error" in r]
    assert len(errors) == 1, f"{line!r:.200}: got {resp!r:.500}"
    err = errors[0]
    assert isinstance(err["error"], str) and err["error"]
    assert not any("isDuringSearch" in r for r in resp), f"{line!r:.200} was analysed"
    if expected[0] == "general":
        assert set(err) == {"error"}, err
        assert expected[1] in err["error"]
    else:
        _, qid, field, text = expected
        assert set(err) == {"id", "field", "error"}, err
        assert (err["id"], err["field"]) == (qid, field), f"{line!r:.200}: {err}"
        assert text in err["error"], f"{line!r:.200}: {err}"


def test_bad_queries__corpus_is_big_enough() -> None:
    assert len(corpus()) >= 200


def test_bad_queries__each_gets_a_katago_shaped_error_and_engine_keeps_serving() -> None:
    svc = AnalysisService(make_engine(max_visits=3))
    good = Collector()
    try:
        for n, (line, expected) in enumerate(corpus()):
            got = Collector()
            svc.handle_line(line, got)
            _check(got.items, expected, line)
            if n % 25 == 0:
                svc.handle_line(json.dumps({**BASE, "id": f"good{n}", "maxVisits": 3}), good)
    finally:
        svc.close(timeout=30)
    finals = good.finals()
    assert len(finals) == len({r["id"] for r in finals}) >= 8
    assert all(r["rootInfo"]["visits"] >= 3 for r in finals)


@pytest.mark.parametrize("text", ["", "   ", "\n", "\r\n"])
def test_bad_queries__blank_lines_are_ignored(text: str) -> None:
    svc = AnalysisService(make_engine())
    got = Collector()
    svc.handle_line(text, got)
    svc.close()
    assert got.items == []
