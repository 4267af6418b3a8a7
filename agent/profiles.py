"""Device profiles: one TOML file per device class in ``profiles/``, validated, and chosen for the
detected hardware with the reasons why.

A profile says how it matches (``[match]``), which engine to run, the runtime + precision
preference list with its fallbacks (``[[runtimes]]``, first usable wins), the recommended network,
search settings, thermal limits and optional verification-threshold overrides. Unknown keys are
errors (``extra="forbid"``), so a typo in a profile fails ``katago-edge check-config``.

Matching (``select``): a profile is a candidate when every rule it states holds:

* ``kind`` equals ``Hardware.kind``;
* identity: when any of ``pi_types`` (Raspberry Pi revision-code *type*, the field the Pi docs
  say to filter on), ``jetson_families`` or ``model_patterns`` (case-insensitive globs over the
  model string) is given, at least one must match; a decoded type or family decides on its own,
  the globs count only when it is unknown;
* ``min_memory_mb`` / ``max_memory_mb`` against ``MemTotal``;
* ``cpu_features`` all present; ``nvidia_gpu`` true/false; ``runtimes`` all usable.

A Pi / Jetson / Android board with an arm64 CPU that no profile matches falls back to the
generic ``arm64`` profile. The candidate with the highest ``priority`` wins (specific boards above the generic ``x86_64`` /
``arm64`` profiles). The agent config can force a profile and override any field
(``overrides = {"profile": "raspberry-pi-4", "search": {"threads": 2}}``).

Profiles are found in ``$KATAGO_EDGE_PROFILES``, else the repository's ``profiles/`` when running
from a checkout, else ``<sys.prefix>/share/katago-edge/profiles`` (installed by ``pip install``).
This module imports nothing from the rest of ``agent`` except ``agent.errors`` and the hardware
dataclasses.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
import platform
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.errors import ConfigError
from agent.hardware import Hardware
from agent.hardware.runtimes import Runtimes

logger = logging.getLogger(__name__)

Kind = Literal["raspberry-pi", "jetson", "android", "x86_64", "arm64", "other"]
RuntimeName = Literal["tensorrt", "onnx", "tflite", "numpy", "katago"]
# Names written by earlier versions (profiles, configs, `bench --apply`): read as the one vocabulary.
LEGACY_RUNTIME_NAMES = {"onnxruntime": "onnx", "litert": "tflite"}


def _canonical_runtime(value: Any) -> Any:
    if isinstance(value, str) and value in LEGACY_RUNTIME_NAMES:
        logger.warning("runtime name %r is deprecated; write %r", value, LEGACY_RUNTIME_NAMES[value])
        return LEGACY_RUNTIME_NAMES[value]
    return value


Precision = Literal["fp32", "fp16", "int8"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MatchRules(_Strict):
    kind: Kind
    pi_types: list[str] = Field(default_factory=list)
    jetson_families: list[str] = Field(default_factory=list)
    model_patterns: list[str] = Field(default_factory=list)
    min_memory_mb: int | None = Field(default=None, ge=0)
    max_memory_mb: int | None = Field(default=None, ge=0)
    cpu_features: list[str] = Field(default_factory=list)
    nvidia_gpu: bool | None = None
    runtimes: list[RuntimeName] = Field(default_factory=list)

    @field_validator("runtimes", mode="before")
    @classmethod
    def _legacy_names(cls, value: Any) -> Any:
        return [_canonical_runtime(v) for v in value] if isinstance(value, list) else value


class RuntimeChoice(_Strict):
    runtime: RuntimeName
    precision: Precision = "fp32"
    provider: str | None = None  # an onnxruntime execution provider, e.g. "CUDAExecutionProvider"
    required: bool = False  # true: the daemon fails instead of falling back when this entry cannot serve

    @field_validator("runtime", mode="before")
    @classmethod
    def _legacy_name(cls, value: Any) -> Any:
        return _canonical_runtime(value)

    @property
    def label(self) -> str:
        via = f" via {self.provider}" if self.provider else ""
        return f"{self.runtime}/{self.precision}{via}"


class EngineSettings(_Strict):
    kind: Literal["native", "katago"] = "native"


class NetworkSettings(_Strict):
    recommended: str
    alternatives: list[str] = Field(default_factory=list)


class SearchSettings(_Strict):
    threads: int = Field(ge=1, le=256)
    runtime_threads: int = Field(
        default=0, ge=0, le=256, description="network runtime CPU threads (0: the runtime's default)"
    )
    batch_size: int = Field(ge=1, le=1024)
    default_visits: int = Field(ge=1)
    max_visits: int = Field(ge=1)
    nn_cache_size: int = Field(ge=0, description="NN cache entries (positions)")

    @model_validator(mode="after")
    def _visits(self) -> SearchSettings:
        if self.default_visits > self.max_visits:
            raise ValueError(f"default_visits {self.default_visits} exceeds max_visits {self.max_visits}")
        return self


class ThermalSettings(_Strict):
    zones: list[str] = Field(default_factory=list, description="zone-type globs; empty = all zones")
    soft_limit_c: float
    hard_limit_c: float
    hysteresis_c: float = Field(default=5.0, ge=0)
    reduced_threads: int | None = Field(default=None, ge=1)
    reduced_max_visits: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _limits(self) -> ThermalSettings:
        if self.soft_limit_c >= self.hard_limit_c:
            raise ValueError(
                f"soft_limit_c {self.soft_limit_c} must be below hard_limit_c {self.hard_limit_c}"
            )
        return self


class Profile(_Strict):
    name: str
    description: str = ""
    priority: int = 0
    match: MatchRules
    engine: EngineSettings = EngineSettings()
    runtimes: list[RuntimeChoice] = Field(min_length=1)
    network: NetworkSettings
    search: SearchSettings
    thermal: ThermalSettings
    verify: dict[Precision, dict[str, tuple[Literal["<", "<=", ">", ">="], float]]] = Field(
        default_factory=dict,
        description="per precision, verification thresholds overriding agent.models.verify's defaults: "
        '"metric.stat" = [op, value], e.g. [verify.int8] "policy_kl.mean" = ["<", 0.05]',
    )


# --- locating and loading -------------------------------------------------------------------------


def profiles_dir() -> Path:
    """Where the shipped profiles are (see the module docstring for the search order)."""
    env = os.environ.get("KATAGO_EDGE_PROFILES")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parent.parent / "profiles"
    if checkout.is_dir() and any(checkout.glob("*.toml")):
        return checkout
    for prefix in (sys.prefix, sys.base_prefix):
        installed = Path(prefix) / "share" / "katago-edge" / "profiles"
        if installed.is_dir():
            return installed
    return checkout


def _format_validation(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: {exc.error_count()} error(s)"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)


def load_profile(path: Path) -> Profile:
    """One profile file, validated; ``ConfigError`` names the file and every bad key."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(path, exc)) from exc
    if profile.name != path.stem:
        raise ConfigError(f"{path}: name {profile.name!r} must equal the file name {path.stem!r}")
    return profile


def load_profiles(directory: Path | None = None) -> list[Profile]:
    """Every ``*.toml`` in ``directory`` (default ``profiles_dir()``), sorted by name."""
    directory = directory or profiles_dir()
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise ConfigError(f"no profiles (*.toml) in {directory}")
    return [load_profile(f) for f in files]


# --- matching -------------------------------------------------------------------------------------

_ARM64_BOARDS = ("raspberry-pi", "jetson", "android")


def _glob(text: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(text.lower(), pattern.lower())


def match_profile(profile: Profile, hw: Hardware) -> tuple[bool, list[str]]:
    """Whether ``profile`` matches ``hw``; the reasons say which rules held, or the first that failed."""
    rules = profile.match
    why: list[str] = []
    if rules.kind != hw.kind:
        return False, [f"kind is {hw.kind}, not {rules.kind}"]
    why.append(f"kind={hw.kind}")

    # Identity: a decoded Pi revision type or Jetson module family decides on its own (the Pi docs:
    # filter on the type field); the model-string globs are for boards whose type is unknown.
    identity: list[str] = []
    pi_type = hw.raspberry_pi.type_name if hw.raspberry_pi else None
    family = hw.jetson.family if hw.jetson else None
    decided = (rules.pi_types and pi_type) or (rules.jetson_families and family)
    if rules.pi_types and pi_type in rules.pi_types:
        identity.append(f"Pi revision type {pi_type!r} in {rules.pi_types}")
    if rules.jetson_families and family in rules.jetson_families:
        identity.append(f"Jetson module family {family!r} ({hw.jetson.part_number if hw.jetson else ''})")
    if not decided:
        for pattern in rules.model_patterns:
            if _glob(hw.model, pattern):
                identity.append(f"model {hw.model!r} matches {pattern!r}")
                break
    if (rules.pi_types or rules.jetson_families or rules.model_patterns) and not identity:
        return False, [f"model {hw.model!r} (type {pi_type or family}) matches none of its identity rules"]
    why.extend(identity)

    mem = hw.memory_mb
    if rules.min_memory_mb is not None:
        if mem is None or mem < rules.min_memory_mb:
            return False, [f"memory {mem} MB below {rules.min_memory_mb} MB"]
        why.append(f"memory {mem} MB >= {rules.min_memory_mb} MB")
    if rules.max_memory_mb is not None:
        if mem is None or mem > rules.max_memory_mb:
            return False, [f"memory {mem} MB above {rules.max_memory_mb} MB"]
        why.append(f"memory {mem} MB <= {rules.max_memory_mb} MB")
    missing = [f for f in rules.cpu_features if f not in hw.cpu.features]
    if missing:
        return False, [f"CPU lacks {', '.join(missing)}"]
    if rules.cpu_features:
        why.append(f"CPU has {', '.join(rules.cpu_features)}")
    if rules.nvidia_gpu is not None:
        has_gpu = bool(hw.nvidia_gpus)
        if has_gpu != rules.nvidia_gpu:
            return False, ["no NVIDIA GPU" if rules.nvidia_gpu else "has an NVIDIA GPU"]
        why.append(f"NVIDIA GPU: {hw.nvidia_gpus[0].name}" if has_gpu else "no NVIDIA GPU")
    for runtime in rules.runtimes:
        if hw.runtimes is None or not hw.runtimes.available(runtime):
            return False, [f"runtime {runtime} not usable"]
        why.append(f"runtime {runtime} usable")
    return True, why


def choose_runtime(profile: Profile, runtimes: Runtimes | None) -> tuple[RuntimeChoice | None, list[str]]:
    """The first usable entry of the profile's runtime preference list, with a reason per entry."""
    if runtimes is None:
        first = profile.runtimes[0]
        return first, [f"runtimes not probed; assuming the first preference {first.label}"]
    reasons: list[str] = []
    for choice in profile.runtimes:
        status = runtimes.get(choice.runtime)
        if status is None or not status.available:
            problem = status.problem if status else "unknown runtime"
            reasons.append(f"runtime {choice.label}: missing ({problem})")
            continue
        if choice.provider and choice.provider not in status.providers:
            reasons.append(
                f"runtime {choice.label}: onnxruntime lacks {choice.provider} (has {', '.join(status.providers)})"
            )
            continue
        reasons.append(f"runtime {choice.label}: usable, chosen")
        return choice, reasons
    reasons.append("no runtime of the preference list is usable")
    return None, reasons


def choose_engine(
    profile: Profile, runtimes: Runtimes | None, machine: str | None = None
) -> tuple[str, list[str]]:
    """The engine the daemon runs for ``profile``, and what it does about the KataGo binary.

    The daemon never swaps engines by itself: a profile with ``engine = "katago"`` runs a KataGo
    binary (``agent.engines.katago_binary.find_katago``: ``[katago] binary``, ``katago`` on PATH,
    the one cached from the katrain wheel, else a download of that wheel when ``[katago] download``
    is true, the default). Only ``engine = "native"`` in the agent config runs our search instead.
    So a missing binary is reported as what happens at start-up, not as a fallback. ``machine`` is
    this machine's ``uname -m`` (the katrain wheel's KataGo is a Linux x86-64 AppImage).
    """
    if profile.engine.kind == "native":
        return "native", ["engine native (our search over the chosen runtime)"]
    if runtimes is None:
        return "katago", ["engine katago (runtimes not probed)"]
    status = runtimes.get("katago")
    if status is not None and status.available:
        return "katago", [f"engine katago: binary {status.path}"]
    problem = status.problem if status else "no katago binary found"
    machine = machine or platform.machine()
    if machine.lower() in ("x86_64", "amd64"):
        return "katago", [
            f"engine katago ({problem}): the daemon runs KataGo from the katrain wheel instead (cached, "
            "else fetched from PyPI at first start, ~106 MB, as [katago] download = true allows)"
        ]
    return "katago", [
        f"engine katago ({problem}): the katrain wheel's KataGo is x86-64 only, so on this {machine} "
        "machine the daemon cannot start until a katago binary is installed; "
        'engine = "native" in the agent config runs our search instead'
    ]


def _deep_merge(
    base: dict[str, Any], extra: Mapping[str, Any], path: str, notes: list[str]
) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        where = f"{path}.{key}" if path else key
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value, where, notes)
        else:
            merged[key] = value
            notes.append(f"override {where} = {value!r}")
    return merged


def apply_overrides(profile: Profile, overrides: Mapping[str, Any]) -> tuple[Profile, list[str]]:
    """``profile`` with ``overrides`` deep-merged in and re-validated."""
    notes: list[str] = []
    data = _deep_merge(profile.model_dump(), overrides, "", notes)
    try:
        return Profile.model_validate(data), notes
    except ValidationError as exc:
        raise ConfigError(_format_validation(Path(f"<overrides of {profile.name}>"), exc)) from exc


def select(
    hardware: Hardware,
    overrides: Mapping[str, Any] | None = None,
    profiles: list[Profile] | None = None,
) -> tuple[Profile, list[str]]:
    """The profile for ``hardware`` and the reasons (rules matched, runtimes usable or missing).

    ``overrides`` may hold ``profile`` (force a profile by name) and any profile fields to
    override. ``ConfigError`` when nothing matches or an override is invalid.
    """
    profiles = profiles if profiles is not None else load_profiles()
    overrides = dict(overrides or {})
    forced = overrides.pop("profile", None)
    by_name = {p.name: p for p in profiles}
    reasons: list[str] = []
    if forced is not None:
        if forced not in by_name:
            raise ConfigError(
                f"profile {forced!r} forced by the config does not exist (have: {', '.join(by_name)})"
            )
        chosen = by_name[forced]
        ok, why = match_profile(chosen, hardware)
        reasons.append(
            f"profile {forced} forced by the config ({'matches' if ok else 'does not match'}: {'; '.join(why)})"
        )
    else:
        candidates = []
        near_misses = []
        for profile in profiles:
            ok, why = match_profile(profile, hardware)
            if ok:
                candidates.append((profile, why))
            elif profile.match.kind == hardware.kind:
                near_misses.append(f"{profile.name} not matched: {'; '.join(why)}")
        if not candidates and hardware.cpu.arch == "aarch64" and hardware.kind in _ARM64_BOARDS:
            # A board we have no profile for (a new Pi, a Tegra that is not a Jetson): the
            # generic arm64 profile still fits the CPU.
            generic = dataclasses.replace(hardware, kind="arm64")
            for profile in profiles:
                ok, why = match_profile(profile, generic)
                if ok:
                    candidates.append((profile, why))
            if candidates:
                reasons.append(
                    f"no {hardware.kind} profile matches {hardware.model!r}; treating it as a generic arm64 board"
                )
        if not candidates:
            raise ConfigError(
                f"no profile matches {hardware.kind} {hardware.model!r}; "
                "set `profile = NAME` in the agent config (see `katago-edge check-config`)"
            )
        candidates.sort(key=lambda item: (-item[0].priority, item[0].name))
        chosen, why = candidates[0]
        reasons.append(f"profile {chosen.name} matched: {'; '.join(why)}")
        others = [f"{p.name} (priority {p.priority})" for p, _ in candidates[1:]]
        if others:
            reasons.append(f"also matched, lower priority: {', '.join(others)}")
        reasons.extend(near_misses)
    if overrides:
        chosen, notes = apply_overrides(chosen, overrides)
        reasons.extend(notes)
    _, engine_reasons = choose_engine(chosen, hardware.runtimes)
    _, runtime_reasons = choose_runtime(chosen, hardware.runtimes)
    reasons.extend(engine_reasons + runtime_reasons)
    return chosen, reasons
