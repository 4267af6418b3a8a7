"""Search parameters, named and defaulted like KataGo's ``SearchParams`` for the analysis engine.

Every field carries the KataGo config key it is read from (``cfg_key``), so the same table
serves three inputs: a KataGo ``.cfg`` file, ``-override-config k=v,...`` and a query's
``overrideSettings`` object. Values arrive as strings from a ``.cfg`` and as JSON values from a
query; ``SearchParams.with_overrides`` converts both and rejects out-of-range values with
KataGo-like messages.

Defaults are those of ``katago analysis`` (``Setup::SETUP_FOR_ANALYSIS``): wide root noise 0.04,
conservative pass at the root, pre-root history ignored, root FPU reduction 0.1, one symmetry.

Utility, in the spirit of KataGo: ``winLossUtilityFactor * (win - loss)`` plus a static and a
dynamic score utility, each ``factor * E[2/pi * atan((score - center) / (scale * sqrt(area)))]``
for a normally distributed final score; the dynamic centre follows the root's expected score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from agent.errors import QueryError

PERSPECTIVES = ("BLACK", "WHITE", "SIDETOMOVE")


def _f(key: str, default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    from dataclasses import field

    return field(default=default, metadata={"cfg_key": key, "lo": lo, "hi": hi})


@dataclass(frozen=True)
class SearchParams:
    # limits
    max_visits: int = _f("maxVisits", 500, 1, float(1 << 50))
    max_playouts: int = _f("maxPlayouts", 1 << 50, 1, float(1 << 50))
    max_time: float = _f("maxTime", 1e20, 0.0, 1e20)
    num_threads: int = _f("numSearchThreads", 1, 1, 1024)
    # katago-edge's own: with one search thread, prepare the predicted next leaf while the
    # network runs (agent.search.speculate); never changes results
    speculate: bool = _f("speculateNextLeaf", True)
    # exploration
    cpuct_exploration: float = _f("cpuctExploration", 1.0, 0.0, 100.0)
    cpuct_exploration_log: float = _f("cpuctExplorationLog", 0.45, 0.0, 100.0)
    cpuct_exploration_base: float = _f("cpuctExplorationBase", 500.0, 1.0, 1e10)
    cpuct_utility_stdev_prior: float = _f("cpuctUtilityStdevPrior", 0.40, 0.0, 10.0)
    cpuct_utility_stdev_prior_weight: float = _f("cpuctUtilityStdevPriorWeight", 2.0, 0.0, 1e6)
    cpuct_utility_stdev_scale: float = _f("cpuctUtilityStdevScale", 0.85, 0.0, 1.0)
    fpu_reduction_max: float = _f("fpuReductionMax", 0.2, 0.0, 2.0)
    root_fpu_reduction_max: float = _f("rootFpuReductionMax", 0.1, 0.0, 2.0)
    fpu_parent_weight_by_visited_policy_pow: float = _f("fpuParentWeightByVisitedPolicyPow", 2.0, 0.0, 10.0)
    root_policy_temperature: float = _f("rootPolicyTemperature", 1.0, 0.01, 100.0)
    nn_policy_temperature: float = _f("nnPolicyTemperature", 1.0, 0.01, 100.0)
    root_policy_optimism: float = _f("rootPolicyOptimism", 0.2, 0.0, 1.0)
    policy_optimism: float = _f("policyOptimism", 1.0, 0.0, 1.0)
    wide_root_noise: float = _f("wideRootNoise", 0.04, 0.0, 5.0)
    root_num_symmetries_to_sample: int = _f("rootNumSymmetriesToSample", 1, 1, 8)
    root_symmetry_pruning: bool = _f("rootSymmetryPruning", True)
    # utility
    win_loss_utility_factor: float = _f("winLossUtilityFactor", 1.0, 0.0, 1.0)
    static_score_utility_factor: float = _f("staticScoreUtilityFactor", 0.1, 0.0, 1.0)
    dynamic_score_utility_factor: float = _f("dynamicScoreUtilityFactor", 0.3, 0.0, 1.0)
    dynamic_score_center_zero_weight: float = _f("dynamicScoreCenterZeroWeight", 0.2, 0.0, 1.0)
    dynamic_score_center_scale: float = _f("dynamicScoreCenterScale", 0.75, 0.2, 5.0)
    no_result_utility_for_white: float = _f("noResultUtilityForWhite", 0.0, -2.0, 2.0)
    draw_equivalent_wins_for_white: float = _f("drawEquivalentWinsForWhite", 0.5, 0.0, 1.0)
    playout_doubling_advantage: float = _f("playoutDoublingAdvantage", 0.0, -3.0, 3.0)
    playout_doubling_advantage_pla: str = _f("playoutDoublingAdvantagePla", "")
    # uncertainty-weighted visits (KataGo: useUncertainty)
    use_uncertainty: bool = _f("useUncertainty", True)
    uncertainty_coeff: float = _f("uncertaintyCoeff", 0.25, 0.0001, 1.0)
    uncertainty_max_weight: float = _f("uncertaintyMaxWeight", 8.0, 1.0, 100.0)
    # move choice and reporting
    use_lcb_for_selection: bool = _f("useLcbForSelection", True)
    lcb_stdevs: float = _f("lcbStdevs", 5.0, 1.0, 12.0)
    min_visit_prop_for_lcb: float = _f("minVisitPropForLCB", 0.15, 0.0, 1.0)
    chosen_move_prune: float = _f("chosenMovePrune", 1.0, 0.0, 1e6)
    root_ending_bonus_points: float = _f("rootEndingBonusPoints", 0.5, -1.0, 1.0)
    # evaluation options
    conservative_pass: bool = _f("conservativePass", True)
    enable_passing_hacks: bool = _f("enablePassingHacks", True)
    ignore_pre_root_history: bool = _f("ignorePreRootHistory", True)
    anti_mirror: bool = _f("antiMirror", False)
    report_analysis_winrates_as: str = _f("reportAnalysisWinratesAs", "BLACK")
    # leaf batching
    virtual_loss_visits: float = _f("numVirtualLossesPerThread", 1.0, 1.0, 1000.0)


_BY_KEY = {f.metadata["cfg_key"]: f for f in fields(SearchParams)}
# Accepted aliases and keys that belong to the engine or the NN evaluator rather than one search.
ALIASES = {"numSearchThreadsPerAnalysisThread": "numSearchThreads"}
ENGINE_KEYS = frozenset(
    {
        "numAnalysisThreads",
        "numRuntimeThreads",
        "numEigenThreadsPerModel",
        "nnMaxBatchSize",
        "nnCacheSizePowerOfTwo",
        "nnMutexPoolSizePowerOfTwo",
        "nnRandomize",
        "nnRandSeed",
        "analysisPVLen",
        "warnUnusedFields",
        "logAllRequests",
        "logAllResponses",
        "logErrorsAndWarnings",
        "logSearchInfo",
        "logDir",
        "logFile",
        "logToStderr",
        "logTimeStamp",
        "homeDataDir",
        "preventCleanupPhase",
        "assumeMultipleStartingBlackMovesAreHandicap",
        "maxBoardXSizeForNNBuffer",
        "maxBoardYSizeForNNBuffer",
        "requireMaxBoardSize",
        "forDeterministicTesting",
    }
)


def cfg_keys() -> frozenset[str]:
    return frozenset(_BY_KEY) | frozenset(ALIASES)


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise ValueError(f"could not parse '{v}' as bool")


def _convert(key: str, value: Any, current: Any) -> Any:
    f = _BY_KEY[key]
    if key == "reportAnalysisWinratesAs":
        s = str(value).strip().upper()
        if s not in PERSPECTIVES:
            raise ValueError(f"reportAnalysisWinratesAs must be BLACK, WHITE or SIDETOMOVE, got '{value}'")
        return s
    if key == "playoutDoublingAdvantagePla":
        s = str(value).strip().upper()
        if s not in ("", "BLACK", "WHITE", "B", "W"):
            raise ValueError(f"playoutDoublingAdvantagePla must be BLACK or WHITE, got '{value}'")
        return s[:1] if s else ""
    if isinstance(current, bool):
        return _to_bool(value)
    if isinstance(value, bool):
        raise ValueError(f"{key}: expected a number, got {value!r}")
    try:
        num = float(value) if not isinstance(value, int | float) else value
    except (TypeError, ValueError) as exc:
        raise ValueError(f"could not parse '{value}' as a number for key {key}") from exc
    if not math.isfinite(float(num)):
        raise ValueError(f"{key} must be finite")
    lo, hi = f.metadata["lo"], f.metadata["hi"]
    if (lo is not None and num < lo) or (hi is not None and num > hi):
        raise ValueError(f"{key} must be in [{lo}, {hi}], got {value}")
    if isinstance(current, int):
        if float(num) != int(float(num)):
            raise ValueError(f"{key} must be an integer, got {value}")
        return int(float(num))
    return float(num)


def with_overrides(params: SearchParams, overrides: dict[str, Any]) -> tuple[SearchParams, list[str]]:
    """Apply KataGo-named overrides. Returns (params, unknown keys). Raises ``ValueError``.

    Keys the engine understands but that are not per-search (``ENGINE_KEYS``) are not "unknown".
    """
    changes: dict[str, Any] = {}
    unknown: list[str] = []
    for raw_key, value in overrides.items():
        key = ALIASES.get(raw_key, raw_key)
        if key not in _BY_KEY:
            if key not in ENGINE_KEYS:
                unknown.append(raw_key)
            continue
        name = _BY_KEY[key].name
        changes[name] = _convert(key, value, getattr(params, name))
    return (replace(params, **changes) if changes else params), unknown


def override_query_settings(params: SearchParams, settings: dict[str, Any]) -> tuple[SearchParams, list[str]]:
    """``overrideSettings`` of one query; raises ``QueryError`` on field ``overrideSettings``."""
    try:
        return with_overrides(params, settings)
    except ValueError as exc:
        raise QueryError(f"Could not set settings: {exc}", "overrideSettings") from exc
