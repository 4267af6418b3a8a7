"""``katago-edge bench``: measure this device and suggest the best configuration.

Measures, with warm-up and repetitions (median and spread): network evals/s and latency for each
runtime x precision x batch x threads; search visits/s next to the network's evals/s; the
end-to-end latency of a query through the local Unix socket (and MQTT with ``--broker``); model
load and conversion times; peak RSS. ``--katago PATH`` runs KataGo's own ``benchmark`` on the same
game in the same run and reports our figures as ratios to KataGo's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.app.config import add_config_argument
from agent.errors import AgentError, ConfigError
from agent.models.store import ModelStore, Recipe, default_store_root

logger = logging.getLogger(__name__)

FULL = {"batches": "1,2,4,8,16", "threads": "1,{cores}", "search_threads": "1,2", "visits": 200, "reps": 10}
QUICK = {"batches": "1,8", "threads": "{cores}", "search_threads": "1,2", "visits": 50, "reps": 4}


def _ints(text: str, cores: int) -> list[int]:
    try:
        values = sorted({int(v.replace("{cores}", str(cores))) for v in text.split(",") if v.strip()})
    except ValueError as exc:
        raise ConfigError(f"expected a comma-separated list of integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise ConfigError(f"expected positive integers, got {text!r}")
    return values


def configure_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", "-model", type=Path, help="KataGo network (.bin.gz); default: the agent config's"
    )
    add_config_argument(parser, "its model, and where --apply writes")
    parser.add_argument("--runtimes", default="numpy,onnx,tflite,tensorrt", help="runtimes to try")
    parser.add_argument("--precisions", default="fp32,fp16,int8", help="precisions to try")
    parser.add_argument("--batches", help="batch sizes (default 1,2,4,8,16; --quick 1,8)")
    parser.add_argument("--threads", help="runtime CPU threads (default 1,<cores>)")
    parser.add_argument("--search-threads", help="search threads (default 1,2)")
    parser.add_argument("--visits", type=int, help="visits per search position (default 200; --quick 50)")
    parser.add_argument("--reps", type=int, help="timed repetitions per figure (default 10; --quick 4)")
    parser.add_argument("--no-search", action="store_true", help="skip the search benchmark")
    parser.add_argument("--no-e2e", action="store_true", help="skip end-to-end latency")
    parser.add_argument("--broker", help="HOST:PORT of an MQTT broker for the MQTT round trip")
    parser.add_argument(
        "--katago",
        type=Path,
        help="a KataGo binary (e.g. its Eigen build): the same queries through its `analysis`, "
        "interleaved with ours, for every variant and search-thread count",
    )
    parser.add_argument(
        "--katago-visits", type=int, default=100, help="visits per query in the KataGo comparison"
    )
    parser.add_argument("--katago-rounds", type=int, default=2, help="rounds over the positions (default 2)")
    parser.add_argument(
        "--cores",
        type=int,
        help="pin this run (and the KataGo child) to the first N CPUs, as `taskset -c 0-(N-1)` would",
    )
    parser.add_argument("--cache-dir", type=Path, help="where converted networks are kept")
    parser.add_argument("--quick", action="store_true", help="about a minute: fewer variants and repetitions")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE", help="write every figure as JSON")
    parser.add_argument("--apply", action="store_true", help="write the suggestion into the agent config")


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[str], None]]:
    """A rich progress bar on a terminal, plain log lines otherwise."""
    if not enabled:
        yield lambda msg: logger.info("bench: %s", msg)
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True, console=_console()
    ) as bar:
        task = bar.add_task("benchmark", total=total)

        def step(msg: str) -> None:
            bar.update(task, advance=1, description=msg)

        yield step


def _console() -> Any:
    from rich.console import Console

    # piped into a file or a log, rich would wrap the tables at 80 columns
    return Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def _resolve_model(args: argparse.Namespace) -> tuple[Path, Path | None]:
    config_path = args.config
    if args.model is not None:
        if not args.model.is_file():
            raise ConfigError(f"{args.model}: no such network file")
        return args.model, config_path
    from agent.app.config import load_config

    cfg = load_config(config_path) if config_path else load_config(None)
    if cfg.model and Path(cfg.model).is_file():
        return Path(cfg.model), config_path
    raise ConfigError(
        "no network to benchmark: pass --model PATH (e.g. `katago-edge fetch-model katrain` fetches one)"
    )


def _runtime_list(config_path: Path) -> list[dict[str, Any]]:
    """The runtime list the device serves with now (its profile's, after the config's overrides):
    ``--apply`` keeps it behind the chosen variant as the fallback chain."""
    from agent.app.config import load_config
    from agent.app.startup import make_plan

    config = load_config(config_path if config_path.is_file() else None)
    return [entry.to_json() for entry in make_plan(config).runtimes]


def command_bench(args: argparse.Namespace) -> int:
    from agent.bench import nn as nnbench
    from agent.bench.positions import bench_positions
    from agent.bench.report import apply_suggestion, int8_vs_fp32, machine_description, suggest

    if args.cores:
        # before any runtime starts its thread pool: threads inherit the calling thread's CPU set
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
    model, config_path = _resolve_model(args)
    preset = QUICK if args.quick else FULL
    cores = os.cpu_count() or 1
    batches = _ints(args.batches or str(preset["batches"]), cores)
    threads = _ints(args.threads or str(preset["threads"]), cores)
    search_threads = _ints(args.search_threads or str(preset["search_threads"]), cores)
    visits = int(args.visits or str(preset["visits"]))
    reps = int(args.reps or str(preset["reps"]))
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    variants = [(r, p) for r, p in nnbench.ALL_VARIANTS if r in runtimes and p in precisions]
    if args.quick:
        variants = [
            v
            for v in variants
            if v
            in {
                ("numpy", "fp32"),
                ("onnx", "fp32"),
                ("onnx", "int8"),
                ("tflite", "fp32"),
                ("tensorrt", "fp16"),
            }
        ]
    store = ModelStore(args.cache_dir / "models" if args.cache_dir else default_store_root())
    positions = bench_positions()
    report: dict[str, Any] = {
        "model": model.name,
        "machine": machine_description(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "settings": {
            "batches": batches,
            "threads": threads,
            "search_threads": search_threads,
            "visits": visits,
            "reps": reps,
            "quick": bool(args.quick),
        },
    }
    total_steps = len(variants) * len(batches) * len(threads) + len(search_threads) + 2
    with _progress(total_steps, sys.stderr.isatty() and args.json != "-") as step:
        nn = nnbench.run_nn_bench(
            model,
            positions,
            variants=variants,
            batches=batches,
            threads=threads,
            store=store,
            reps=reps,
            max_seconds=10.0 if args.quick else 30.0,
            progress=step,
        )
        report["nn"] = nn.to_dict()
        if not args.no_search:
            report["search"] = _search(model, nn, store, positions, search_threads, visits, step)
        if not args.no_e2e:
            report["e2e"] = _e2e(model, args.broker, step)
        if args.katago:
            report["versus_katago"] = _versus(args, model, nn, store, positions, search_threads, step)
    report["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["peak_rss_mb"] = round(nnbench.peak_rss_mb(), 1)
    suggestion = suggest(report["nn"]["results"], nn.verified(), cores)
    report["suggestion"] = suggestion.to_dict() if suggestion else None
    report["int8_vs_fp32"] = int8_vs_fp32(
        report["nn"]["results"],
        nn.verified(),
        nn.manifests(),
        skipped=nn.skipped,
        statuses=nn.verify_statuses(),
    )
    _add_ratios(report)
    _print_table(report)
    if args.json:
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.apply:
        if suggestion is None:
            raise AgentError("nothing to apply: no variant ran")
        target = config_path or Path(os.environ.get("KATAGO_EDGE_CONFIG", "/etc/katago-edge/agent.toml"))
        apply_suggestion(target, suggestion, _runtime_list(target))
        print(f"wrote the suggestion to {target}", file=sys.stderr)
    return 0


def _search(
    model: Path,
    nn: Any,
    store: ModelStore,
    positions: list[Any],
    thread_counts: list[int],
    visits: int,
    step: Callable[[str], None],
) -> dict[str, Any]:
    from agent.bench.search import run_search_benches
    from agent.network.reader import read_network

    # The search runs on the fastest fp32 variant measured (exact, so the search is unaffected),
    # with that variant's runtime threads (what --apply writes into the profile).
    fp32 = [r for r in nn.results if r.precision == "fp32"]
    best = max(fp32, key=lambda r: r.evals_per_s, default=None)
    runtime = best.runtime if best else "numpy"
    artifact = nn.artifacts.get(f"{runtime}/fp32") or store.prepare(model, Recipe("numpy"))
    post = read_network(model).postprocess
    step(
        f"search with {runtime}, {best.threads if best else 'default'} runtime threads "
        f"({', '.join(map(str, thread_counts))} search threads)"
    )
    try:
        results = run_search_benches(
            lambda: store.open(artifact, threads=best.threads if best else 0),
            post,
            positions,
            thread_counts=thread_counts,
            visits=visits,
        )
    except (AgentError, ImportError, TimeoutError, RuntimeError) as exc:
        return {"error": str(exc)}
    threads = best.threads if best else None
    return {
        "runtime": f"{runtime}/fp32",
        "runtime_threads": threads,
        "results": [r.to_dict() for r in results],
    }


def _e2e(model: Path, broker: str | None, step: Callable[[str], None]) -> dict[str, Any]:
    from agent.bench.e2e import run_e2e

    step("end-to-end latency")
    try:
        return run_e2e(model, broker=broker)
    except (AgentError, ImportError, TimeoutError, OSError) as exc:
        return {"error": str(exc)}


def _versus(
    args: argparse.Namespace,
    model: Path,
    nn: Any,
    store: ModelStore,
    positions: list[Any],
    thread_counts: list[int],
    step: Callable[[str], None],
) -> dict[str, Any]:
    """The same queries through our engine (every built variant) and KataGo's ``analysis``."""
    from agent.bench.versus import run_versus

    verified = nn.verified()
    nets: dict[str, tuple[Any, bool]] = {}
    for label, artifact in nn.artifacts.items():
        if label.startswith("numpy/") and len(nn.artifacts) > 1:
            continue  # the reference runtime: not what a device serves with when another runs

        def open_net(threads: int, artifact: Any = artifact) -> Any:
            return store.open(artifact, threads=threads)

        nets[label] = (open_net, bool(verified.get(label)))
    try:
        rows = run_versus(
            args.katago,
            model,
            nets,
            positions,
            thread_counts=thread_counts,
            visits=args.katago_visits,
            rounds=args.katago_rounds,
            progress=step,
        )
    except AgentError as exc:
        return {"error": str(exc)}
    return {
        "binary": str(args.katago),
        "visits": args.katago_visits,
        "rounds": args.katago_rounds,
        "positions": len(positions),
        "rows": [r.to_dict() for r in rows],
    }


def _add_ratios(report: dict[str, Any]) -> None:
    """Ours / KataGo per verified variant and thread count (``versus_katago``), and the best
    verified variant per thread count. Variants that failed verification get no ratio."""
    rows = report.get("versus_katago", {}).get("rows", [])
    if not rows:
        return
    ratios: dict[str, Any] = {}
    best: dict[int, tuple[float, str]] = {}
    for r in rows:
        x = r["visits_per_s_ratio"]
        if x is None:
            continue
        t = r["search_threads"]
        ratios[f"{r['variant']}@{t}t"] = x
        if x > best.get(t, (0.0, ""))[0]:
            best[t] = (x, r["variant"])
    for t, (x, label) in sorted(best.items()):
        ratios[f"best_verified@{t}t"] = {"variant": label, "visits_per_s_ratio": x}
    report["ratios_vs_katago"] = ratios


def _print_table(report: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    machine = report["machine"]
    table = Table(title=f"{report['model']} on {machine.get('cpu_model')} ({machine.get('cores')} cores)")
    for col in ("runtime", "precision", "threads", "batch", "evals/s", "p50 ms", "p95 ms", "spread"):
        table.add_column(col, justify="right" if col not in ("runtime", "precision") else "left")
    for r in report["nn"]["results"]:
        table.add_row(
            r["runtime"],
            r["precision"],
            str(r["threads"] or "default"),
            str(r["batch"]),
            f"{r['evals_per_s']:.1f}",
            f"{r['latency_ms_p50']:.1f}",
            f"{r['latency_ms_p95']:.1f}",
            f"{r['latency']['spread']:.2f}",
        )
    console.print(table)
    for label, reason in report["nn"]["skipped"].items():
        console.print(f"[dim]skipped {label}: {reason}[/dim]")
    search = report.get("search", {})
    if search.get("results"):
        console.print(
            f"search on {search.get('runtime')}, {search.get('runtime_threads')} runtime thread(s):"
        )
    for r in search.get("results", []):
        console.print(
            f"search {r['threads']} thread(s): {r['visits_per_s']:.1f} visits/s, network alone "
            f"{r.get('standalone_evals_per_s', 0.0):.1f} evals/s, during search {r['nn_evals_per_s']:.1f} "
            f"(avg batch {r['avg_batch']:.2f}), visits/evals {r['visits_over_evals']:.2f} "
            f"(during search {r.get('visits_over_evals_during_search', 0.0):.2f}); CPU per visit "
            f"{r.get('cpu_ms_per_visit', 0.0):.2f} ms, of it the search's own "
            f"{r.get('search_cpu_ms_per_visit', 0.0):.2f} ms, network CPU / all CPU "
            f"{r.get('visits_over_evals_cpu', 0.0):.2f}",
            soft_wrap=True,  # one line per search, whatever the terminal's width
        )
    versus = report.get("versus_katago", {})
    if versus.get("rows"):
        from agent.bench.versus import VERSUS_COLUMNS, versus_table

        vt = Table(
            title=f"same queries vs KataGo {versus['binary']} ({versus['positions']} positions x "
            f"{versus['visits']} visits x {versus['rounds']} rounds, interleaved; CPUs "
            f"{report.get('cpus_allowed')}, load {report.get('load_avg_start')} -> {report.get('load_avg_end')})"
        )
        for col in VERSUS_COLUMNS:
            vt.add_column(col, justify="left" if col == "variant" else "right")
        for cells in versus_table(versus["rows"]):
            vt.add_row(*cells)
        console.print(vt)
    elif versus.get("error"):
        console.print(f"KataGo comparison failed: {versus['error']}")
    if report.get("ratios_vs_katago"):
        console.print(f"ratios to KataGo (verified variants only): {report['ratios_vs_katago']}")
    if report.get("int8_vs_fp32"):
        from agent.bench.report import INT8_TARGET, int8_vs_fp32_lines

        console.print(
            f"[bold]INT8 vs FP32[/bold] (evals/s, the best ratio over the batch/threads measured in "
            f"both; only a verified INT8 counts; target {INT8_TARGET:g}x):"
        )
        for line in int8_vs_fp32_lines(report["int8_vs_fp32"]):
            console.print(line, soft_wrap=True, markup=False, highlight=False)
    console.print(f"peak RSS {report['peak_rss_mb']} MB")
    if report.get("suggestion"):
        s = report["suggestion"]
        console.print(
            f"[bold]suggested:[/bold] {s['runtime']}/{s['precision']}, {s['threads']} threads, "
            f"batch {s['batch_size']} ({'; '.join(s['reasons'])})"
        )
