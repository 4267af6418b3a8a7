"""What ``katago-edge serve`` does before it can serve: plan, prepare the network, build the engine.

1. **Plan.** Probe the hardware under ``config.root`` (``agent.hardware.probe_hardware``) and
   choose a profile (``agent.profiles``), or take the one named in the config. The plan says
   which engine (native search or a KataGo binary), which runtime and precision, threads and
   visit caps.
2. **Network.** ``config.model`` is a path, a URL or a store name (``agent.models.fetch`` brings
   it into ``model_store_dir``), or a converted file (``.onnx``, ``.tflite``, ``.engine``) served
   as it is. The plan's runtime entries are tried in order through the model store
   (``agent.models.serving.open_network``): each builds, verifies and caches its artifact once
   (``<cache_dir>/models``), and each entry that cannot serve is a visible fallback with its
   reason (``NetworkReport``: health, ``katago-edge status``, the fleet table). ``fake`` (or
   ``fake:delay=SECONDS``) selects the deterministic fake network of ``agent.backends.fake``: no
   file, for tests and dry runs.
3. **Engine.** ``assemble_engine``, the one place an engine is built (for the daemon, for
   ``katago-edge analysis`` and for the benchmarks): the native engine runs our search over the
   net the model store prepared; ``katago`` supervises a KataGo binary. The engine is wrapped in
   the ``AnalysisService`` every transport shares.

Each step that can fail raises an ``AgentError`` whose message says what to do, because the
daemon prints exactly that one line and exits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.app.config import AgentConfig
from agent.backends.base import NeuralNet
from agent.backends.fake import FakeNet
from agent.backends.registry import runtime_for_file
from agent.engines.base import Engine
from agent.engines.katago_binary import KataGoSettings
from agent.engines.katago_process import engine_from_settings
from agent.engines.native import NativeEngine
from agent.errors import ConfigError, ModelStoreError
from agent.hardware import Hardware, probe_hardware
from agent.hardware.runtimes import probe_runtimes
from agent.models.fetch import fetch_model
from agent.models.serving import NetworkReport, RuntimeEntry, open_network
from agent.models.store import ModelStore, default_store_root
from agent.profiles import Profile
from agent.progress import NO_PROGRESS, ProgressFactory
from agent.protocol.service import AnalysisService
from agent.search.params import SearchParams

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """The decisions taken before serving; also reported in status and health."""

    profile: str
    hardware_kind: str
    hardware_model: str
    engine: str  # "native" | "katago"
    runtimes: tuple[RuntimeEntry, ...]  # by preference; the first that can serve wins
    threads: int = 2
    runtime_threads: int = 0  # network runtime CPU threads, 0: the runtime's default
    batch_size: int = 8
    default_visits: int = 500
    cache_size: int = 1 << 16
    recommended_network: str | None = None
    reasons: tuple[str, ...] = ()
    verify: tuple[tuple[str, tuple[tuple[str, str, float], ...]], ...] = ()  # profile's verify overrides
    profile_model: Any = field(default=None, compare=False)  # agent.profiles.Profile (thermal limits)


def make_plan(config: AgentConfig) -> Plan:
    """Probe the hardware and choose the profile (or apply the one named in the config)."""
    from agent import profiles

    hardware = probe_hardware(config.root).with_runtimes(
        probe_runtimes(str(config.katago.binary) if config.katago.binary else None)
    )
    overrides: dict[str, Any] = dict(config.overrides)
    if config.profile:
        overrides["profile"] = config.profile
    known = profiles.load_profiles(config.profiles_dir)
    profile, reasons = profiles.select(hardware, overrides, known)
    return plan_for(config, hardware, profile, reasons)


def plan_for(config: AgentConfig, hardware: Hardware, profile: Profile, reasons: list[str]) -> Plan:
    """The plan for a profile already chosen for ``hardware`` (``detect`` has both in hand)."""
    # The profile's order is kept: the first entry is what was asked for, and each one before the
    # entry that serves is a fallback with its reason (open_network tries them in this order).
    ordered = list(profile.runtimes)
    engine = config.engine if config.engine != "auto" else profile.engine.kind
    runtimes = [
        RuntimeEntry(c.runtime, c.precision, c.provider, c.required) for c in ordered if c.runtime != "katago"
    ]
    if not any(e.runtime == "numpy" for e in runtimes):
        runtimes.append(RuntimeEntry("numpy", "fp32"))  # the reference runtime runs everywhere, slowly
    return Plan(
        profile=profile.name,
        hardware_kind=hardware.kind,
        hardware_model=hardware.model,
        engine=engine,
        runtimes=tuple(runtimes),
        threads=profile.search.threads,
        runtime_threads=profile.search.runtime_threads,
        batch_size=profile.search.batch_size,
        default_visits=profile.search.default_visits,
        cache_size=max(1024, profile.search.nn_cache_size),
        recommended_network=profile.network.recommended,
        reasons=tuple(reasons),
        verify=tuple(
            (str(precision), tuple((metric, op, float(value)) for metric, (op, value) in table.items()))
            for precision, table in profile.verify.items()
        ),
        profile_model=profile,
    )


# --- the network ---------------------------------------------------------------------------------


def parse_fake(spec: str) -> dict[str, float] | None:
    """``fake`` or ``fake:delay=0.05`` -> keyword arguments for ``FakeNet``; None otherwise."""
    if spec != "fake" and not spec.startswith("fake:"):
        return None
    kwargs: dict[str, float] = {}
    for item in filter(None, spec.partition(":")[2].split(",")):
        key, _, value = item.partition("=")
        if key not in ("delay", "seed"):
            raise ConfigError(f"model {spec!r}: unknown fake-network option {key!r} (delay, seed)")
        kwargs[key] = float(value)
    return kwargs


# The networks profiles recommend by short name, and where to get them when no model is configured.
RECOMMENDED_SOURCES: dict[str, tuple[str, str | None]] = {
    # KataGo's repository, cpp/tests/models/ (MIT); sha256 as in ../shared/models/README.md
    "b6c96": (
        "https://raw.githubusercontent.com/lightvector/KataGo/master/cpp/tests/models/"
        "g170-b6c96-s175395328-d26788732.bin.gz",
        "f5d32604e3675c480c7c8f6aa579a1ea857135628a0afccc8fa56330fbacd38d",
    ),
    # inside the PyPI package katrain (katrain/models/), fetched with pip download
    "b10c384": ("katrain", "0ba27eced5180b3e3d0b898b280c541112989765e789d1eb6cd0d31b2b2c1229"),
}


def fetch_network(config: AgentConfig, progress: Progress, plan: Plan | None = None) -> Path:
    """``config.model`` (or the profile's recommended network) as a local file in the model store."""
    spec = config.model
    sha256 = None
    if not spec and plan is not None and plan.recommended_network:
        spec, sha256 = RECOMMENDED_SOURCES.get(plan.recommended_network, (plan.recommended_network, None))
        logger.info("no model configured: using %s, recommended by profile %s", spec, plan.profile)
    if not spec:
        raise ModelStoreError(
            "no network configured: pass --model PATH|URL, or set model = ... in the config "
            "(`katago-edge fetch-model katrain` fetches one)"
        )
    given = Path(spec).expanduser()
    if runtime_for_file(given) is not None:  # a converted file is served as it is, from where it is
        if not given.is_file():
            raise ModelStoreError(f"{given}: no such converted network file")
        return given
    progress(f"fetching network {spec}")
    return Path(fetch_model(spec, store=config.model_store_dir, sha256=sha256))


def local_network(config: AgentConfig, plan: Plan | None = None) -> Path | None:
    """The network ``serve`` would use, if it is already on this machine (nothing is fetched)."""
    spec = config.model
    if not spec and plan is not None and plan.recommended_network:
        url, _ = RECOMMENDED_SOURCES.get(plan.recommended_network, (plan.recommended_network, None))
        spec = url.rsplit("/", 1)[-1] if "/" in url else ""
        if not spec:  # from the katrain wheel: whatever version of that network the store holds
            found = sorted(config.model_store_dir.glob(f"{plan.recommended_network}*.bin.gz"))
            return found[-1] if found else None
    if not spec or parse_fake(spec) is not None:
        return None
    for candidate in (Path(spec).expanduser(), config.model_store_dir / spec):
        if candidate.is_file():
            return candidate
    return None


def model_store(config: AgentConfig) -> ModelStore:
    """The store of converted networks for this config (``artifact_store``, else ``<cache_dir>/models``)."""
    return ModelStore(config.artifact_store_dir)


def _quiet(_text: str) -> None:
    return None


# EngineRecipe fields that are NativeEngine keyword arguments of the same name
NATIVE_OPTIONS = ("num_analysis_threads", "max_batch_size", "cache_size", "randomize", "seed", "model_name")


@dataclass(frozen=True)
class EngineRecipe:
    """How to build an engine, whoever asks: the daemon (from its plan), ``katago-edge analysis``
    (from a KataGo ``.cfg``) or a benchmark. ``runtimes`` are tried in order by the model store;
    the ``katago*`` fields only matter to ``kind="katago"``."""

    kind: str = "native"  # "native" | "katago"
    runtimes: tuple[RuntimeEntry, ...] = (RuntimeEntry("onnx", "fp32"), RuntimeEntry("numpy", "fp32"))
    thresholds: tuple[tuple[str, tuple[tuple[str, str, float], ...]], ...] = ()  # verify overrides
    params: SearchParams = field(default_factory=SearchParams)
    num_analysis_threads: int = 1
    max_batch_size: int = 8
    cache_size: int = 1 << 16
    randomize: bool = True
    seed: int | None = None
    model_name: str | None = None
    runtime_threads: int = 0  # the network runtime's CPU threads (intra-op), 0: its default
    katago: KataGoSettings = field(default_factory=KataGoSettings)
    katago_config: Path | None = None
    katago_overrides: tuple[tuple[str, str], ...] = ()


def assemble_engine(
    network: Path | NeuralNet,
    recipe: EngineRecipe,
    store: ModelStore | None = None,
    *,
    progress: Progress = _quiet,
    prepare: ProgressFactory = NO_PROGRESS,
    cache_dir: Path | None = None,
) -> tuple[Engine, NetworkReport | None]:
    """The one engine assembly: ``network`` (a network file, or a net already loaded: the fake
    one, a benchmark's) and ``recipe`` -> the engine, and the report of what serves (None for a
    net handed in). A file goes through ``store`` (built, verified, cached once; default: the
    user's model store). ``cache_dir``: where a KataGo engine keeps its binary and config."""
    if recipe.kind == "katago":
        if not isinstance(network, Path):
            raise ConfigError("the KataGo engine needs a network file, not a loaded net")
        progress("starting the KataGo binary")
        katago = engine_from_settings(
            recipe.katago,
            network,
            cache_dir=cache_dir,
            config_path=recipe.katago_config,
            override_config=dict(recipe.katago_overrides),
        )
        report = NetworkReport(
            RuntimeEntry("katago", ""),
            {"runtime": "katago", "precision": None, "provider": None, "file": str(network)},
        )
        return katago, report
    served: NetworkReport | None = None
    if isinstance(network, NeuralNet):
        net = network
    else:
        progress(f"preparing the network ({', '.join(e.label for e in recipe.runtimes)})")
        net, served = open_network(
            network,
            list(recipe.runtimes),
            store or ModelStore(default_store_root()),
            threads=recipe.runtime_threads,
            progress=prepare,
            thresholds=dict(recipe.thresholds),
        )
    options = {name: value for name, value in vars(recipe).items() if name in NATIVE_OPTIONS}
    return NativeEngine(net, default_params=recipe.params, **options), served


def recipe_for(config: AgentConfig, plan: Plan) -> EngineRecipe:
    """The daemon's recipe: the plan's engine, runtimes, threads and caps."""
    return EngineRecipe(
        kind=plan.engine,
        runtimes=plan.runtimes,
        thresholds=plan.verify,
        params=SearchParams(max_visits=plan.default_visits, num_threads=plan.threads),
        runtime_threads=plan.runtime_threads,
        max_batch_size=plan.batch_size,
        cache_size=plan.cache_size,
        katago=config.katago,
    )


def build_engine(
    config: AgentConfig, plan: Plan, progress: Progress, prepare: ProgressFactory = NO_PROGRESS
) -> tuple[Engine, NetworkReport | None]:
    """The engine the plan asks for (native search over the net, or a supervised KataGo), and the
    report of what serves."""
    fake = parse_fake(config.model or "")
    network: Path | NeuralNet
    if fake is not None and plan.engine != "katago":
        network = FakeNet(seed=int(fake.get("seed", 1)), delay=fake.get("delay", 0.0))
    else:
        network = fetch_network(config, progress, plan)
    return assemble_engine(
        network,
        recipe_for(config, plan),
        model_store(config),
        progress=progress,
        prepare=prepare,
        cache_dir=config.cache_dir / "katago",
    )


def build_service(engine: Engine) -> AnalysisService:
    return AnalysisService(engine)
