"""Search parameters under their KataGo names (``agent.search.params``): config keys, overrides, bounds."""

from __future__ import annotations

import pytest

from agent.errors import QueryError
from agent.search.params import SearchParams, cfg_keys, override_query_settings, with_overrides


def test_with_overrides__katago_strings_become_typed_fields() -> None:
    params, unknown = with_overrides(
        SearchParams(),
        {
            "maxVisits": "77",
            "wideRootNoise": "0.0",
            "reportAnalysisWinratesAs": "black",
            "rootSymmetryPruning": "false",
        },
    )
    assert (params.max_visits, params.wide_root_noise) == (77, 0.0)
    assert params.report_analysis_winrates_as == "BLACK" and params.root_symmetry_pruning is False
    assert unknown == []


def test_with_overrides__unknown_keys_are_returned_and_engine_keys_are_not_unknown() -> None:
    params, unknown = with_overrides(SearchParams(), {"mysteryKey": 3, "numAnalysisThreads": 4})
    assert params == SearchParams() and unknown == ["mysteryKey"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"maxVisits": 0}, "maxVisits must be in"),
        ({"maxVisits": 2.5}, "maxVisits must be an integer"),
        ({"cpuctExploration": "lots"}, "could not parse 'lots' as a number"),
        ({"rootSymmetryPruning": "maybe"}, "could not parse 'maybe' as bool"),
        ({"reportAnalysisWinratesAs": "RED"}, "must be BLACK, WHITE or SIDETOMOVE"),
        ({"maxTime": float("inf")}, "must be finite"),
    ],
)
def test_with_overrides__bad_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        with_overrides(SearchParams(), overrides)


def test_override_query_settings__errors_name_the_field() -> None:
    with pytest.raises(QueryError) as info:
        override_query_settings(SearchParams(), {"maxVisits": -1})
    assert info.value.field == "overrideSettings" and str(info.value).startswith("Could not set settings:")
    params, unknown = override_query_settings(
        SearchParams(), {"playoutDoublingAdvantagePla": "WHITE", "x": 1}
    )
    assert params.playout_doubling_advantage_pla == "W" and unknown == ["x"]


def test_cfg_keys__katago_names() -> None:
    keys = cfg_keys()
    assert {"maxVisits", "numSearchThreads", "cpuctExploration", "wideRootNoise"} <= keys
    assert "max_visits" not in keys
