"""Go rules as KataGo models them (``Rules``), the presets and the JSON object form.

KataGo's rules are six independent knobs plus komi (``cpp/game/rules.cpp``):

* ``ko``: SIMPLE (only the immediate recapture is banned), POSITIONAL (no whole-board repeat),
  SITUATIONAL (no repeat of board + side to move), SPIGHT (simple ko, but the game ends when a
  player passes from a repeated situation).
* ``scoring``: AREA (stones + territory) or TERRITORY (territory + prisoners; KataGo "chills"
  komi by one point per stone to make it area-like for the network).
* ``tax``: NONE, SEKI (no points for eyes in seki) or ALL (every group pays two points).
* ``suicide``: multi-stone suicide legal. Single-stone suicide is never legal.
* ``hasButton``: the first pass takes a half-point button (AGA button Go).
* ``whiteHandicapBonus``: "0", "N" or "N-1" extra points for White per handicap stone.
* ``friendlyPassOk``: passing before the opponent's dead stones are removed is harmless, so
  after the opponent passes the network sees no history (KataGo's Chinese-family presets).

Default komi: 7.5 for area scoring, 6.5 for territory, 7.0 with a button. Note: KataGo's
``new-zealand`` preset sets komi 7.5 in ``rules.cpp`` (the spec table's 7.0 is a typo there).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

from agent.errors import RulesError

KO_RULES = ("SIMPLE", "POSITIONAL", "SITUATIONAL", "SPIGHT")
SCORING_RULES = ("AREA", "TERRITORY")
TAX_RULES = ("NONE", "SEKI", "ALL")
WHB_RULES = ("0", "N", "N-1")
MIN_KOMI = -400.0
MAX_KOMI = 400.0


@dataclass(frozen=True)
class Rules:
    ko: str = "POSITIONAL"
    scoring: str = "AREA"
    tax: str = "NONE"
    suicide: bool = True
    has_button: bool = False
    white_handicap_bonus: str = "0"
    friendly_pass_ok: bool = False
    komi: float = 7.5

    @property
    def is_area(self) -> bool:
        return self.scoring == "AREA"

    def with_komi(self, komi: float) -> Rules:
        return replace(self, komi=float(komi))

    def to_json(self, include_komi: bool = False) -> dict[str, Any]:
        """KataGo's ``kata-get-rules`` object; keys in alphabetical order like nlohmann::json."""
        d: dict[str, Any] = {
            "friendlyPassOk": self.friendly_pass_ok,
            "hasButton": self.has_button,
            "ko": self.ko,
        }
        if include_komi:
            d["komi"] = self.komi
        d.update(
            {
                "scoring": self.scoring,
                "suicide": self.suicide,
                "tax": self.tax,
                "whiteHandicapBonus": self.white_handicap_bonus,
            }
        )
        return d

    def to_json_string(self, include_komi: bool = False) -> str:
        return json.dumps(self.to_json(include_komi), separators=(",", ":"))


def _variants(*names: str) -> tuple[str, ...]:
    out: list[str] = []
    for n in names:
        for sep in ("-", "_", " ", ""):
            out.append(n.replace("-", sep))
    return tuple(dict.fromkeys(out))


_TT = Rules()
_PRESETS: dict[str, Rules] = {}
for _names, _rules in (
    (("japanese", "korean"), Rules("SIMPLE", "TERRITORY", "SEKI", False, False, "0", False, 6.5)),
    (("chinese",), Rules("SIMPLE", "AREA", "NONE", False, False, "N", True, 7.5)),
    (
        _variants("chinese-ogs", "chinese-kgs"),
        Rules("POSITIONAL", "AREA", "NONE", False, False, "N", True, 7.5),
    ),
    (
        _variants("ancient-area", "stone-scoring"),
        Rules("SIMPLE", "AREA", "ALL", False, False, "0", True, 7.5),
    ),
    (_variants("ancient-territory"), Rules("SIMPLE", "TERRITORY", "ALL", False, False, "0", False, 6.5)),
    (_variants("aga-button"), Rules("SITUATIONAL", "AREA", "NONE", False, True, "N-1", True, 7.0)),
    (("aga", "bga", "french"), Rules("SITUATIONAL", "AREA", "NONE", False, False, "N-1", True, 7.5)),
    (("nz", *_variants("new-zealand")), Rules("SITUATIONAL", "AREA", "NONE", True, False, "0", True, 7.5)),
    (_variants("tromp-taylor"), _TT),
    (("goe", "ing"), Rules("POSITIONAL", "AREA", "NONE", True, False, "0", True, 7.5)),
):
    for _n in _names:
        _PRESETS[_n] = _rules

PRESET_NAMES: tuple[str, ...] = tuple(_PRESETS)


def komi_is_valid(komi: float) -> bool:
    """KataGo accepts integer or half-integer komi in [-400, 400] (v1.17)."""
    return math.isfinite(komi) and MIN_KOMI <= komi <= MAX_KOMI and float(komi * 2).is_integer()


def _enum(value: Any, allowed: tuple[str, ...], what: str, original: str) -> str:
    if not isinstance(value, str):
        raise RulesError(f"Could not parse rules: {original}")
    v = value.strip().upper()
    if v not in allowed:
        raise RulesError(f"Could not parse rules: {original}")
    return v


def _from_object(obj: dict[str, Any], original: str, allow_komi: bool) -> Rules:
    r = _TT
    komi_given = tax_given = False
    for key, value in obj.items():
        if key == "ko":
            r = replace(r, ko=_enum(value, KO_RULES, "ko", original))
        elif key in ("score", "scoring"):
            r = replace(r, scoring=_enum(value, SCORING_RULES, "scoring", original))
        elif key == "tax":
            r = replace(r, tax=_enum(value, TAX_RULES, "tax", original))
            tax_given = True
        elif key in ("suicide", "hasButton", "friendlyPassOk"):
            if not isinstance(value, bool):
                raise RulesError(f"Could not parse rules: {original}")
            if key == "suicide":
                r = replace(r, suicide=value)
            elif key == "hasButton":
                r = replace(r, has_button=value)
            else:
                r = replace(r, friendly_pass_ok=value)
        elif key == "whiteHandicapBonus":
            if not isinstance(value, str) or value.strip().upper() not in WHB_RULES:
                raise RulesError(f"Could not parse rules: {original}")
            r = replace(r, white_handicap_bonus=value.strip().upper())
        elif key == "komi" and allow_komi:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RulesError(f"Could not parse rules: {original}")
            if not komi_is_valid(float(value)):
                raise RulesError("Komi value is not a half-integer or is too extreme")
            r = replace(r, komi=float(value))
            komi_given = True
        else:
            raise RulesError(f"Unknown rules option: {key}")
    if not tax_given:
        r = replace(r, tax="SEKI" if r.scoring == "TERRITORY" else "NONE")
    if not komi_given:
        r = replace(r, komi=6.5 if r.scoring == "TERRITORY" else (7.0 if r.has_button else 7.5))
    return r


def parse_rules(value: str | dict[str, Any], *, allow_komi: bool = True) -> Rules:
    """Parse a KataGo rules preset name (case-insensitive, trimmed) or JSON object / string.

    Raises ``RulesError`` with KataGo's messages: ``Could not parse rules: <text>``,
    ``Unknown rules option: <key>``, ``Komi value is not a half-integer or is too extreme``.
    """
    if isinstance(value, dict):
        return _from_object(value, json.dumps(value), allow_komi)
    if not isinstance(value, str):
        raise RulesError(f"Could not parse rules: {value!r}")
    key = value.strip().lower()
    if key in _PRESETS:
        return _PRESETS[key]
    if value.startswith("{"):
        try:
            obj = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RulesError(f"Could not parse rules: {value}") from exc
        if not isinstance(obj, dict):
            raise RulesError(f"Could not parse rules: {value}")
        return _from_object(obj, value, allow_komi)
    raise RulesError(f"Could not parse rules: {value}")


def supported_rules(rules: Rules) -> tuple[Rules, list[str]]:
    """KataGo's ``getSupportedRules`` for model version >= 7: SPIGHT -> SITUATIONAL, and no
    button under territory scoring. Returns the rules and the warnings to report."""
    warnings: list[str] = []
    r = rules
    if r.ko == "SPIGHT":
        r = replace(r, ko="SITUATIONAL")
    if r.scoring == "TERRITORY" and r.has_button:
        r = replace(r, has_button=False)
    if r != rules:
        warnings.append(
            f"Rules {rules.to_json_string()} not supported by neural net, using {r.to_json_string()} instead"
        )
    return r, warnings
