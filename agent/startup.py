"""What ``katago-edge serve`` does before it can serve: plan, prepare the network, build the engine.

1. **Plan.** Probe the hardware under ``config.root`` (``agent.hardware.probe_hardware``) and
   choose a profile (``agent.profiles``), or take the one named in the config. The plan says
   which engine (native search or a KataGo binary), which runtime and precision, threads and
   visit caps.
2. **Network.** ``config.model`` is a path, a URL or a model-store name; ``agent.models.fetch``
   brings it into the store. A runtime other than numpy needs a converted file; conversions are
   cached under ``<cache_dir>/converted/<sha256 of the source>-<runtime>-<precision>`` so a
   restart (or a second ``install.sh``) does not convert again, and a new network (new hash)
   never reuses an old conversion. ``fake`` (or ``fake:delay=SECONDS``) selects the
   deterministic fake network of ``agent.backends.fake``: no file, for tests and dry runs.
3. **Engine.** The native engine runs our search over the loaded net; ``katago`` supervises a
   KataGo binary. The engine is wrapped in the ``AnalysisService`` every transport shares.

Each step that can fail raises an ``AgentError`` whose message says what to do, because the
daemon prints exactly that one line and exits.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.errors import AgentError, ConfigError, ModelStoreError, RuntimeUnavailable

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]

CONVERTED_SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "tensorrt": ".engine"}


@dataclass(frozen=True)
class Plan:
    """The decisions taken before serving; also reported in status and health."""

    profile: str
    hardware_kind: str
    hardware_model: str
    engine: str  # "native" | "katago"
    runtimes: tuple[tuple[str, str], ...]  # (runtime, precision) by preference; first that loads wins
    threads: int = 2
    batch_size: int = 8
    default_visits: int = 500
    cache_size: int = 1 << 16
    recommended_network: str | None = None
    reasons: tuple[str, ...] = ()
    profile_model: Any = field(default=None, compare=False)  # agent.profiles.Profile (thermal limits)


def _optional(module: str) -> Any | None:
    """Import ``module`` if it is installed; a missing dependency *inside* it still raises."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and module.startswith(exc.name):
            return None
        raise


# profile runtime names (agent.profiles) -> the runtime names of agent.backends.registry / the converters
RUNTIME_ALIASES = {"onnxruntime": "onnx", "litert": "tflite", "tensorrt": "tensorrt", "numpy": "numpy"}


def make_plan(config: AgentConfig) -> Plan:
    """Probe the hardware and choose the profile (or apply the one named in the config)."""
    from agent import profiles
    from agent.hardware import probe_hardware
    from agent.hardware.runtimes import probe_runtimes

    hardware = probe_hardware(config.root).with_runtimes(
        probe_runtimes(str(config.katago.binary) if config.katago.binary else None)
    )
    overrides: dict[str, Any] = dict(config.overrides)
    if config.profile:
        overrides["profile"] = config.profile
    known = profiles.load_profiles(config.profiles_dir)
    profile, reasons = profiles.select(hardware, overrides, known)
    choice, _ = profiles.choose_runtime(profile, hardware.runtimes)
    ordered = list(profile.runtimes)
    if choice is not None:  # the usable one first, the rest as fallbacks
        ordered.remove(choice)
        ordered.insert(0, choice)
    engine = config.engine if config.engine != "auto" else profile.engine.kind
    runtimes = [(RUNTIME_ALIASES[c.runtime], c.precision) for c in ordered if c.runtime in RUNTIME_ALIASES]
    if ("numpy", "fp32") not in runtimes:
        runtimes.append(("numpy", "fp32"))  # the reference runtime runs everywhere, slowly
    return Plan(
        profile=profile.name,
        hardware_kind=hardware.kind,
        hardware_model=hardware.model,
        engine=engine,
        runtimes=tuple(runtimes),
        threads=profile.search.threads,
        batch_size=profile.search.batch_size,
        default_visits=profile.search.default_visits,
        cache_size=max(1024, profile.search.nn_cache_size),
        recommended_network=profile.network.recommended,
        reasons=tuple(reasons),
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
    from agent.models.fetch import fetch_model

    progress(f"fetching network {spec}")
    return Path(fetch_model(spec, store=config.model_store_dir, sha256=sha256))


def source_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def converted_path(config: AgentConfig, source: Path, runtime: str, precision: str) -> Path:
    """Cache location of ``source`` converted for ``runtime``/``precision`` (keyed by content)."""
    return (
        config.converted_dir / f"{source_hash(source)[:16]}-{runtime}-{precision}{CONVERTED_SUFFIX[runtime]}"
    )


def prepare_for_runtime(
    config: AgentConfig, source: Path, runtime: str, precision: str, progress: Progress
) -> Path:
    """The file ``runtime`` loads: the source itself for numpy, else a cached verified conversion."""
    if runtime == "numpy":
        return source
    if runtime not in CONVERTED_SUFFIX:
        raise RuntimeUnavailable(f"unknown runtime {runtime!r}")
    target = converted_path(config, source, runtime, precision)
    if target.is_file():
        logger.info("using cached %s conversion %s", runtime, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    progress(f"converting network to {runtime} {precision} (once; cached by source hash)")
    if runtime == "onnx" and precision in ("fp32", "fp16"):
        convert_onnx(source, target, precision)
        return target
    convert_mod = _optional("agent.network.convert")
    if convert_mod is None or not hasattr(convert_mod, "convert_network"):
        raise RuntimeUnavailable(f"converting to {runtime} {precision} needs agent.network.convert")
    convert_mod.convert_network(source, target, to=runtime, precision=precision)
    return target


VERIFY_POSITIONS = 24


def convert_onnx(source: Path, target: Path, precision: str) -> None:
    """Build the ONNX graph (FP16 if asked), verify it against the numpy reference, then store it.

    Verification uses a few self-play positions of the reference network itself, so it needs no
    data; a conversion that misses the accuracy thresholds is never cached (``VerificationFailed``).
    """
    from agent.backends.onnx.builder import build_onnx
    from agent.backends.registry import load_net as runtime_load
    from agent.fsutil import atomic_write_bytes
    from agent.models.positions import positions_from_selfplay
    from agent.models.verify import verify
    from agent.network.reader import read_network

    network = read_network(source)
    model = build_onnx(network)
    if precision == "fp16":
        from agent.backends.onnx.quantize import to_fp16

        model = to_fp16(model)
    data = model.SerializeToString()
    staging = target.with_suffix(".unverified.onnx")
    atomic_write_bytes(staging, data)
    try:
        reference = runtime_load(network, runtime="numpy")
        converted = runtime_load(staging, runtime="onnx")
        positions = positions_from_selfplay(reference, VERIFY_POSITIONS, games=2, max_moves=60)
        report = verify(converted, reference, positions, network.postprocess, precision=precision)
        report.raise_if_failed(f"{network.name} as onnx {precision}")
        converted.close()
        logger.info("conversion verified: %s", report.summary())
        staging.replace(target)
    finally:
        staging.unlink(missing_ok=True)


def load_net(config: AgentConfig, plan: Plan, progress: Progress) -> Any:
    """Load the network with the first runtime of the plan that works; say which in the log."""
    fake = parse_fake(config.model or "")
    if fake is not None:
        from agent.backends.fake import FakeNet

        return FakeNet(seed=int(fake.get("seed", 1)), delay=fake.get("delay", 0.0))
    source = fetch_network(config, progress, plan)
    runtime_mod = _optional("agent.backends.registry")
    loader = getattr(runtime_mod, "load_net", None)
    if loader is None:
        raise RuntimeUnavailable("no network runtime installed (agent.backends.registry.load_net is missing)")
    failures = []
    for runtime, precision in plan.runtimes:
        try:
            path = prepare_for_runtime(config, source, runtime, precision, progress)
            progress(f"loading network with {runtime}")
            return loader(path, runtime=runtime)
        except AgentError as exc:
            failures.append(f"{runtime}: {exc}")
            logger.warning("runtime %s unusable: %s", runtime, exc)
    raise RuntimeUnavailable("no runtime could load the network: " + "; ".join(failures))


def build_engine(config: AgentConfig, plan: Plan, progress: Progress) -> Any:
    """The engine the plan asks for (native search over the net, or a supervised KataGo)."""
    if plan.engine == "katago":
        from agent.engines.katago_process import engine_from_settings

        source = fetch_network(config, progress, plan)
        progress("starting the KataGo binary")
        return engine_from_settings(config.katago, source, cache_dir=config.cache_dir / "katago")
    from agent.engines.native import NativeEngine
    from agent.search.params import SearchParams

    net = load_net(config, plan, progress)
    params = SearchParams(max_visits=plan.default_visits, num_threads=plan.threads)
    return NativeEngine(
        net,
        post_params(net, config, plan),
        default_params=params,
        max_batch_size=plan.batch_size,
        cache_size=plan.cache_size,
    )


def post_params(net: Any, config: AgentConfig, plan: Plan) -> Any:
    """The header's post-processing parameters for ``net`` (runtimes keep them in different places)."""
    from agent.network.model import PostProcessParams

    if getattr(net.info, "runtime", "") == "fake":
        return PostProcessParams(model_version=15, policy_channels=2)  # FakeNet mimics a v15 net
    for found in (
        getattr(net, "postprocess_params", None),
        getattr(getattr(net, "network", None), "postprocess", None),
    ):
        if isinstance(found, PostProcessParams):
            return found
    from agent.network.reader import read_network

    return read_network(fetch_network(config, lambda _text: None, plan)).postprocess


def build_service(engine: Any) -> Any:
    from agent.protocol.service import AnalysisService

    return AnalysisService(engine)
