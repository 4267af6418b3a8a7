"""``katago-edge analysis``: a drop-in for ``katago analysis`` on stdin/stdout.

Accepts KataGo's command line as KaTrain writes it::

    katago-edge analysis -model M.bin.gz -config analysis.cfg -override-config homeDataDir=~/.katrain

(single-dash long options; ``--model`` etc. work too), plus our own ``--runtime``
(numpy/onnx/tflite/tensorrt) and ``--precision`` for a KataGo network, prepared through the model
store (``agent.models.store``: built and verified once, then cached; default ONNX FP32 with the
numpy reference as a visible fallback); a converted file (``.onnx``, ``.tflite``, ``.engine``)
is served by the runtime its suffix names and ``--engine native|katago`` (``--katago PATH`` for the
real binary, supervised by ``agent.engines.katago_process``).

Config: KataGo ``.cfg`` syntax (``key = value``, ``#`` comments), then ``-override-config``
(``k=v`` pairs separated by commas). Search keys go to ``SearchParams``; engine keys
(``numAnalysisThreads``, ``nnMaxBatchSize``, ``nnCacheSizePowerOfTwo``, ``nnRandomize``,
``nnRandSeed``, ``analysisPVLen``, ``warnUnusedFields``) configure the engine; KataGo keys
that only matter to KataGo's backends or logging are accepted quietly; anything else is
reported on stderr as unused, like KataGo's "unused config keys" warning.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from agent.app.startup import NATIVE_OPTIONS, EngineRecipe, assemble_engine
from agent.backends.registry import RUNTIME_NAMES
from agent.engines.base import Engine
from agent.engines.katago_binary import KataGoSettings
from agent.errors import ConfigError, ModelStoreError
from agent.models.serving import RuntimeEntry
from agent.models.store import ModelStore
from agent.progress import ProgressDisplay
from agent.search.params import ENGINE_KEYS, SearchParams, cfg_keys, with_overrides

logger = logging.getLogger(__name__)

# KataGo keys with no meaning for our engine (backend tuning, logging): accepted without warning.
QUIET_PREFIXES = (
    "cuda",
    "trt",
    "opencl",
    "metal",
    "numNNServerThreads",
    "gpuToUse",
    "deviceToUse",
    "log",
    "nnMutexPool",
    "openclTuner",
    "homeDataDir",
)
MAX_CACHE_POWER = 17  # a cached eval holds policy + ownership (~4 KiB): 2^17 entries ~ 0.5 GiB


def configure_analysis(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-model", "--model", dest="model", required=True, help="network file (.bin.gz, .onnx, ...)"
    )
    parser.add_argument("-config", "--config", dest="config", help="KataGo analysis .cfg file")
    parser.add_argument(
        "-override-config",
        "--override-config",
        dest="override_config",
        action="append",
        default=[],
        help="k=v[,k=v...] overriding the config (repeatable)",
    )
    parser.add_argument("-human-model", "--human-model", dest="human_model", help="accepted; not supported")
    parser.add_argument("-analysis-threads", "--analysis-threads", dest="analysis_threads", type=int)
    parser.add_argument(
        "-quit-without-waiting", "--quit-without-waiting", dest="quit_without_waiting", action="store_true"
    )
    parser.add_argument(
        "--runtime",
        choices=list(RUNTIME_NAMES),
        help="network runtime for a KataGo network (default: onnx, numpy if onnxruntime is missing); "
        "a converted file (.onnx, .tflite, .engine) names its own",
    )
    parser.add_argument(
        "--precision", choices=["fp32", "fp16", "int8"], default="fp32", help="with --runtime (default fp32)"
    )
    parser.add_argument(
        "--runtime-threads",
        type=int,
        help="CPU threads of the network runtime (config: numRuntimeThreads, or KataGo's "
        "numEigenThreadsPerModel); default as KataGo's Eigen build: min(numAnalysisThreads x "
        "numSearchThreads, CPU cores)",
    )
    parser.add_argument("--engine", choices=["native", "katago"], default="native")
    parser.add_argument("--katago", help="path of the KataGo binary for --engine katago")


def parse_cfg_text(text: str, source: str = "<config>") -> dict[str, str]:
    """KataGo config syntax: ``key = value`` lines, ``#`` comments, blank lines."""
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise ConfigError(f"{source}:{n}: expected 'key = value', got {raw.strip()!r}")
        key, value = (s.strip() for s in line.split("=", 1))
        if not key:
            raise ConfigError(f"{source}:{n}: empty key")
        out[key] = value
    return out


def parse_overrides(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        for part in item.replace("\n", ",").split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise ConfigError(f"-override-config: expected k=v, got {part!r}")
            k, v = (s.strip() for s in part.split("=", 1))
            out[k] = v
    return out


def load_config(path: str | None, overrides: list[str]) -> dict[str, str]:
    cfg: dict[str, str] = {}
    if path:
        try:
            cfg = parse_cfg_text(Path(path).expanduser().read_text(encoding="utf-8"), path)
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    cfg.update(parse_overrides(overrides))
    return cfg


def _bool(cfg: dict[str, str], key: str, default: bool) -> bool:
    if key not in cfg:
        return default
    v = cfg[key].strip().lower()
    if v not in ("true", "false"):
        raise ConfigError(f"config key {key}: expected true or false, got {cfg[key]!r}")
    return v == "true"


def _int(cfg: dict[str, str], key: str, default: int, lo: int, hi: int) -> int:
    if key not in cfg:
        return default
    try:
        v = int(cfg[key])
    except ValueError as exc:
        raise ConfigError(f"config key {key}: expected an integer, got {cfg[key]!r}") from exc
    if not lo <= v <= hi:
        raise ConfigError(f"config key {key}: {v} outside [{lo}, {hi}]")
    return v


def engine_settings(cfg: dict[str, str]) -> dict[str, Any]:
    """Split a KataGo config into SearchParams and engine settings; warns about unknown keys."""
    search_keys = {k: v for k, v in cfg.items() if k in cfg_keys()}
    try:
        params, _ = with_overrides(SearchParams(), search_keys)
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from exc
    unknown = [
        k for k in cfg if k not in cfg_keys() and k not in ENGINE_KEYS and not k.startswith(QUIET_PREFIXES)
    ]
    for k in unknown:
        print(f"WARNING: config key {k} is not used by katago-edge", file=sys.stderr)
    power = _int(cfg, "nnCacheSizePowerOfTwo", 16, 0, 48)
    analysis_threads = _int(cfg, "numAnalysisThreads", 1, 1, 1024)
    return {
        "params": params,
        "num_analysis_threads": analysis_threads,
        "runtime_threads": runtime_threads(cfg, analysis_threads, params.num_threads),
        "max_batch_size": _int(cfg, "nnMaxBatchSize", 8, 1, 4096),
        "cache_size": 1 << min(power, MAX_CACHE_POWER),
        "randomize": _bool(cfg, "nnRandomize", True),
        "seed": int(cfg["nnRandSeed"]) if cfg.get("nnRandSeed", "").lstrip("-").isdigit() else None,
        "pv_len": _int(cfg, "analysisPVLen", 15, 1, 100),
        "warn_unused_fields": _bool(cfg, "warnUnusedFields", True),
        "unknown_keys": unknown,
    }


def runtime_threads(cfg: dict[str, str], analysis_threads: int, search_threads: int) -> int:
    """The network runtime's CPU threads: ``numRuntimeThreads`` (or KataGo's
    ``numEigenThreadsPerModel``, the same thing for its CPU build), else KataGo's Eigen default,
    one per search thread of every analysis thread up to the CPU count. An unbounded runtime
    (ONNX Runtime takes every core) would compete with the search threads for the same cores."""
    for key in ("numRuntimeThreads", "numEigenThreadsPerModel"):
        if key in cfg:
            return _int(cfg, key, 0, 1, 1024)
    return max(1, min(analysis_threads * search_threads, os.cpu_count() or 1))


def runtime_entries(runtime: str | None, precision: str) -> list[RuntimeEntry]:
    """What ``--runtime``/``--precision`` ask for: that entry alone (required: a user who names a
    runtime gets it or an error), else ONNX FP32 with the numpy reference as the fallback."""
    if runtime:
        return [RuntimeEntry(runtime, precision, required=True)]
    return [RuntimeEntry("onnx", precision), RuntimeEntry("numpy", "fp32")]


def build_native_engine(
    model: str, entries: list[RuntimeEntry], settings: dict[str, Any], store: ModelStore | None = None
) -> Engine:
    """Our search over ``model``: a KataGo network prepared through the model store (built and
    verified once), or a converted file (``.onnx``, ``.tflite``, ``.engine``) served as it is."""
    path = Path(model).expanduser()
    if not path.is_file():
        raise ModelStoreError(f"{model}: no such network file")
    native = {key: settings[key] for key in ("params", "runtime_threads", *NATIVE_OPTIONS) if key in settings}
    recipe = EngineRecipe(runtimes=tuple(entries), model_name=path.name, **native)
    with ProgressDisplay(f"preparing {path.name}") as prepare:
        engine, report = assemble_engine(path, recipe, store, prepare=prepare)
    if report is not None and report.fell_back:
        print(f"WARNING: serving with a fallback: {report.summary()}", file=sys.stderr)
    return engine


def build_katago_engine(args: argparse.Namespace) -> Engine:
    """``--engine katago [--katago PATH]``: the real binary over ``-model``, with ``-config`` and
    ``-override-config`` (``-analysis-threads`` as ``numAnalysisThreads``) handed to KataGo."""
    overrides = parse_overrides(args.override_config or [])
    if args.analysis_threads:
        overrides["numAnalysisThreads"] = str(args.analysis_threads)
    if args.runtime_threads:
        overrides["numEigenThreadsPerModel"] = str(args.runtime_threads)
    recipe = EngineRecipe(
        kind="katago",
        katago=KataGoSettings(binary=Path(args.katago) if args.katago else None),
        katago_config=Path(args.config) if args.config else None,
        katago_overrides=tuple(overrides.items()),
    )
    engine, _ = assemble_engine(Path(args.model), recipe)
    return engine


def command_analysis(args: argparse.Namespace) -> int:
    # SIGTERM/SIGHUP (a timeout, a closed terminal, a supervisor) end it like KataGo's own
    # engine: open queries are abandoned, and a KataGo child (``--engine katago``, started in its
    # own session) is stopped rather than left running.
    def _stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _serve_analysis(args)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve_analysis(args: argparse.Namespace) -> int:
    from agent.protocol.service import AnalysisService
    from agent.transports.local.stdio import StdioTransport

    cfg = load_config(args.config, args.override_config)
    if args.human_model:
        print("WARNING: -human-model is not supported by katago-edge; ignoring it", file=sys.stderr)
    settings = engine_settings(cfg)
    if args.analysis_threads is not None:
        if "numAnalysisThreads" in cfg:
            raise ConfigError("numAnalysisThreads is set in the config; do not also pass -analysis-threads")
        settings["num_analysis_threads"] = max(1, args.analysis_threads)
        if not {"numRuntimeThreads", "numEigenThreadsPerModel"} & cfg.keys():
            settings["runtime_threads"] = runtime_threads(
                cfg, settings["num_analysis_threads"], settings["params"].num_threads
            )
    if args.runtime_threads is not None:
        settings["runtime_threads"] = max(1, args.runtime_threads)
    if args.engine == "katago":
        engine = build_katago_engine(args)
    else:
        print(
            f"threads: {settings['num_analysis_threads']} analysis x {settings['params'].num_threads} "
            f"search, {settings['runtime_threads']} network runtime",
            file=sys.stderr,
        )
        engine = build_native_engine(args.model, runtime_entries(args.runtime, args.precision), settings)
    try:
        service = AnalysisService(
            engine,
            default_params=settings["params"],
            default_pv_len=settings["pv_len"],
            warn_unused_fields=settings["warn_unused_fields"],
        )
        print("Started, ready to begin handling requests", file=sys.stderr, flush=True)
        transport = StdioTransport(
            service, sys.stdin.buffer, sys.stdout.buffer, quit_without_waiting=args.quit_without_waiting
        )
        return transport.serve()
    except SystemExit:
        logger.warning("stopping on a signal: terminating open queries")
        engine.terminate_all()
        engine.close(timeout=5.0)
        raise
