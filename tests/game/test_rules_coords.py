"""Rules presets / JSON form with KataGo's messages, and GTP coordinates."""

from __future__ import annotations

import pytest

from agent.errors import CoordinateError, RulesError
from agent.game.coords import PASS_LOC, Geometry, gtp_to_loc, loc_to_gtp, parse_gtp_xy
from agent.game.rules import Rules, parse_rules, supported_rules

KATA_RULES = {  # kata-get-rules as recorded in ../shared/reference
    "tromp-taylor": '{"friendlyPassOk":false,"hasButton":false,"ko":"POSITIONAL","scoring":"AREA",'
    '"suicide":true,"tax":"NONE","whiteHandicapBonus":"0"}',
    "chinese": '{"friendlyPassOk":true,"hasButton":false,"ko":"SIMPLE","scoring":"AREA",'
    '"suicide":false,"tax":"NONE","whiteHandicapBonus":"N"}',
    "japanese": '{"friendlyPassOk":false,"hasButton":false,"ko":"SIMPLE","scoring":"TERRITORY",'
    '"suicide":false,"tax":"SEKI","whiteHandicapBonus":"0"}',
    "aga": '{"friendlyPassOk":true,"hasButton":false,"ko":"SITUATIONAL","scoring":"AREA",'
    '"suicide":false,"tax":"NONE","whiteHandicapBonus":"N-1"}',
}


@pytest.mark.parametrize("name", sorted(KATA_RULES))
def test_rules__presets_match_kata_get_rules(name: str) -> None:
    assert parse_rules(name).to_json_string() == KATA_RULES[name]


def test_rules__reference_records_kata_rules(reference_dir) -> None:  # type: ignore[no-untyped-def]
    import json

    with open(reference_dir / "rawnn-g170-b6c96.jsonl") as f:
        for line in f:
            r = json.loads(line)
            assert parse_rules(r["rules"]).to_json() == r["kata_rules"], r["rules"]


@pytest.mark.parametrize(
    ("name", "komi"),
    [
        ("japanese", 6.5),
        ("korean", 6.5),
        ("chinese", 7.5),
        ("aga-button", 7.0),
        ("Tromp Taylor", 7.5),
        ("NZ", 7.5),
    ],
)
def test_rules__default_komi(name: str, komi: float) -> None:
    assert parse_rules(name).komi == komi


@pytest.mark.parametrize(
    "name",
    [
        "chinese-ogs",
        "chinese_kgs",
        "stone-scoring",
        "ancient territory",
        "bga",
        "french",
        "new_zealand",
        "goe",
        "ing",
    ],
)
def test_rules__all_preset_spellings_parse(name: str) -> None:
    assert isinstance(parse_rules(f"  {name.upper()} "), Rules)


def test_rules__json_object_defaults() -> None:
    r = parse_rules({"scoring": "TERRITORY"})
    assert (r.ko, r.tax, r.suicide, r.komi) == ("POSITIONAL", "SEKI", True, 6.5)
    r = parse_rules('{"hasButton": true, "ko": "SITUATIONAL"}')
    assert (r.komi, r.tax, r.has_button) == (7.0, "NONE", True)
    assert parse_rules({"komi": 0.5, "score": "AREA"}).komi == 0.5


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nonsense", "Could not parse rules: nonsense"),
        ("", "Could not parse rules: "),
        ('{"ko": "SIMPLE", "foo": 1}', "Unknown rules option: foo"),
        ('{"ko": "BOGUS"}', 'Could not parse rules: {"ko": "BOGUS"}'),
        ('{"komi": 7.3}', "Komi value is not a half-integer or is too extreme"),
        ('{"komi": 401}', "Komi value is not a half-integer or is too extreme"),
        ("{not json", "Could not parse rules: {not json"),
    ],
)
def test_rules__errors_have_katago_messages(value: str, message: str) -> None:
    with pytest.raises(RulesError) as exc:
        parse_rules(value)
    assert str(exc.value) == message


def test_rules__supported_rules_maps_spight_and_territory_button() -> None:
    r, warnings = supported_rules(parse_rules({"ko": "SPIGHT", "scoring": "TERRITORY", "hasButton": True}))
    assert (r.ko, r.has_button) == ("SITUATIONAL", False) and len(warnings) == 1
    assert supported_rules(parse_rules("chinese")) == (parse_rules("chinese"), [])


@pytest.mark.parametrize(
    ("text", "xy"),
    [
        ("D4", (3, 15)),
        ("Q16", (15, 3)),
        ("q16", (15, 3)),
        ("T19", (18, 0)),
        ("A1", (0, 18)),
        ("(3,15)", (3, 15)),
    ],
)
def test_coords__gtp_19x19(text: str, xy: tuple[int, int]) -> None:
    assert parse_gtp_xy(text, 19, 19) == xy


def test_coords__pass_and_round_trip_on_rectangular_boards() -> None:
    assert gtp_to_loc("PASS", 9, 9) == PASS_LOC
    assert loc_to_gtp(PASS_LOC, 9, 9) == "pass"
    for xs, ys in [(2, 2), (13, 9), (9, 13), (19, 19), (19, 2)]:
        g = Geometry(xs, ys)
        for loc in g.all_locs():
            assert g.from_gtp(g.to_gtp(loc)) == loc
            assert g.pos_to_loc(g.loc_to_pos(loc)) == loc
    assert Geometry(13, 9).to_gtp(Geometry(13, 9).loc(12, 0)) == "N9"


@pytest.mark.parametrize("bad", ["I5", "Z1", "D0", "D20", "", "44", "(19,0)", "(a,b)", "J10x"])
def test_coords__bad_points_raise(bad: str) -> None:
    with pytest.raises(CoordinateError, match="Could not parse board location"):
        parse_gtp_xy(bad, 19, 19)


def test_coords__board_size_limits() -> None:
    with pytest.raises(CoordinateError):
        Geometry(1, 9)
    with pytest.raises(CoordinateError):
        Geometry(20, 19)
