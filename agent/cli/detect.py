"""``katago-edge detect`` and ``katago-edge check-config``.

``detect [--root DIR] [--json]`` prints what the hardware probes found, the runtimes this Python
can use, the profile chosen and why (rules matched, runtimes missing). With ``--root`` only files
under DIR are read, so a device tree captured from a device (``tests/fixtures/<device>``)
reproduces its detection here; runtimes always describe this interpreter.

``check-config [FILE]`` validates every shipped profile (each file on its own, so every broken
file is reported) and, if given, an agent config file (``agent.app.config.AgentConfig``), including
that the profile it names exists and its ``[overrides]`` give a valid profile.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from agent.app.config import AgentConfig, add_config_argument, find_config, load_config
from agent.errors import AgentError, ConfigError
from agent.hardware import Hardware, probe_hardware
from agent.hardware.runtimes import probe_runtimes
from agent.models.fetch import hidden_from_unit
from agent.profiles import (
    Profile,
    apply_overrides,
    choose_engine,
    choose_runtime,
    load_profile,
    profiles_dir,
    select,
)

logger = logging.getLogger(__name__)


def configure_detect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", type=Path, default=Path("/"), help="probe this folder instead of / (a device tree)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--profiles-dir", type=Path, default=None, help="profiles folder (default: shipped)")
    parser.add_argument("--profile", default=None, help="force this profile (as the agent config can)")
    parser.add_argument("--katago", default=None, help="path of a KataGo binary to consider")
    parser.add_argument("--health", action="store_true", help="also take a health snapshot")
    add_config_argument(parser, "the network and stores it names")


def _runtime_lines(hw: Hardware) -> list[str]:
    lines = []
    for status in hw.runtimes.items if hw.runtimes else ():
        label = f"{status.name} {status.version or ''}".strip()
        if status.available:
            extra = f" (providers: {', '.join(status.providers)})" if status.providers else ""
            extra += f" ({status.path})" if status.path else ""
            lines.append(f"  {label:<22} usable{extra}")
        else:
            lines.append(f"  {label:<22} missing: {status.problem}")
    return lines


def _hardware_lines(hw: Hardware) -> list[str]:
    cpu = hw.cpu
    lines = [
        f"Hardware (root {hw.root})",
        f"  kind           {hw.kind}",
        f"  model          {hw.model}",
        f"  cpu            {cpu.arch}, {cpu.cores} cores, {cpu.model or 'unknown model'}",
        f"  cpu features   {' '.join(sorted(cpu.features)) or 'none detected'}",
    ]
    if cpu.clusters:
        parts = [f"{len(c.cpus)}x {c.core or 'core'} @ {c.max_freq_mhz} MHz" for c in cpu.clusters]
        lines.append(f"  clusters       {' | '.join(parts)}{'  (big.LITTLE)' if cpu.big_little else ''}")
    if hw.memory:
        lines.append(f"  memory         {hw.memory.total_mb} MB (swap {hw.memory.swap_total_mb} MB)")
    else:
        lines.append("  memory         unknown (no /proc/meminfo)")
    if hw.raspberry_pi and hw.raspberry_pi.revision:
        rev = hw.raspberry_pi.revision
        lines.append(
            f"  pi revision    {rev.hex}: type {rev.type_name}, {rev.processor}, {rev.memory_mb} MB, "
            f"{rev.manufacturer}, rev 1.{rev.revision}"
        )
    if hw.jetson:
        j = hw.jetson
        lines.append(
            f"  jetson module  {j.module or 'unknown'} ({j.part_number or 'no part number'}), {j.soc}"
        )
        lines.append(
            f"  jetson sw      L4T {j.l4t or '?'}, JetPack {j.jetpack or '?'}, CUDA capability {j.cuda_capability}"
        )
    if hw.android:
        a = hw.android
        lines.append(f"  android        SDK {a.sdk}, Android {a.release}, SoC {a.soc}, termux={a.termux}")
    for gpu in hw.nvidia_gpus:
        mem = f", {gpu.memory_mb} MB" if gpu.memory_mb else ""
        cap = f", CUDA {gpu.cuda_capability}" if gpu.cuda_capability else ""
        lines.append(
            f"  nvidia gpu {gpu.index}   {gpu.name}{mem}{cap} (driver {gpu.driver}, via {gpu.source})"
        )
    zones = ", ".join(
        f"{z.name} {z.temp_c:.1f} C" if z.temp_c is not None else f"{z.name} offline"
        for z in hw.thermal_zones
    )
    lines.append(f"  thermal zones  {zones or 'none'}")
    return lines


def _profile_lines(profile: Profile, engine: str, runtime: str | None) -> list[str]:
    s, t = profile.search, profile.thermal
    return [
        f"Profile: {profile.name}",
        f"  {profile.description}",
        f"  engine {engine}; runtime {runtime or 'none usable'}; network {profile.network.recommended}",
        f"  threads {s.threads}, batch {s.batch_size}, visits {s.default_visits} (max {s.max_visits}), "
        f"NN cache {s.nn_cache_size}",
        f"  thermal soft {t.soft_limit_c:.0f} C / hard {t.hard_limit_c:.0f} C on {', '.join(t.zones) or 'all zones'}",
    ]


def network_plan(profile: Profile, hw: Hardware, config: AgentConfig) -> dict[str, Any]:
    """What would serve: each runtime entry of the profile, whether it can run here, whether the
    model store holds its artifact or a refusal, and the first that would serve (a fallback
    when it is not the first entry). The running daemon's own report, if one answers, too."""
    from agent.app.startup import local_network, model_store, plan_for
    from agent.models.serving import RuntimeEntry
    from agent.models.store import Recipe, check_runtime

    plan = plan_for(config, hw, profile, [])
    source = local_network(config, plan)
    store = model_store(config)
    entries: list[dict[str, Any]] = []
    serving: RuntimeEntry | None = None
    for entry in plan.runtimes:
        row: dict[str, Any] = {**entry.to_json(), "required": entry.required}
        try:
            check_runtime(entry.runtime, entry.provider)
            row["runtime_usable"] = True
        except AgentError as exc:
            row["runtime_usable"], row["state"] = False, f"cannot run here: {exc}"
        if row["runtime_usable"]:
            if source is None:
                row["state"] = "network not on this machine yet (fetched at first start)"
            elif entry.runtime == "numpy":
                row["state"] = "the reference itself (no conversion)"
            else:
                recipe = Recipe(entry.runtime, entry.precision, entry.provider)
                refusal = store.refusal(source, recipe)
                cached = store.cached(source, recipe)
                if refusal is not None:
                    row["state"] = f"refused by verification: {refusal.get('reason')}"
                elif cached is not None:
                    row["state"] = (
                        f"artifact in the store ({cached.path.name}, verify {cached.verify['status']})"
                    )
                else:
                    row["state"] = "built and verified at first start"
            usable = not str(row["state"]).startswith("refused")
            if usable and serving is None:
                serving = entry
                row["serves"] = True
        entries.append(row)
    out: dict[str, Any] = {
        "network": str(source) if source else (config.model or plan.recommended_network),
        "store": str(store.root),
        "entries": entries,
        "serves": serving.label if serving else None,
        "fallback": serving is not None and serving != plan.runtimes[0],
    }
    if config.socket.enabled and Path(config.socket.path).exists():
        from agent.cli.status import ask_health

        try:
            out["daemon"] = ask_health(Path(config.socket.path), timeout=2.0).get("network")
        except AgentError as exc:
            out["daemon"] = {"error": str(exc)}
    return out


def _network_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"Network: {report['network']} (model store {report['store']})"]
    for row in report["entries"]:
        via = f" via {row['provider']}" if row.get("provider") else ""
        mark = "->" if row.get("serves") else "  "
        lines.append(f"  {mark} {row['runtime']}/{row['precision']}{via}: {row['state']}")
    if report["fallback"]:
        lines.append(f"  FALLBACK: {report['serves']} would serve, not the profile's first entry")
    daemon = report.get("daemon")
    if daemon:
        serving = daemon.get("serving") or {}
        text = (
            f"{serving.get('runtime')}/{serving.get('precision')} ({serving.get('file')})"
            if serving
            else str(daemon.get("error"))
        )
        lines.append(f"  running daemon serves {text}")
        lines.extend(
            f"  FALLBACK {f['runtime']}/{f['precision']}: {f['reason']}"
            for f in daemon.get("fallbacks") or []
        )
    return lines


def _health(root: Path, profile: Profile) -> dict[str, Any]:
    """A health snapshot with the chosen profile's thermal guard checked once and the default store."""
    from agent.app.health import snapshot
    from agent.app.thermal import ThermalGuard

    store = load_config(find_config(None)).model_store_dir
    guard = ThermalGuard.from_profile(profile, root=root)
    guard.check()
    return snapshot(root=root, model_store=store, thermal=guard).to_dict()


def command_detect(args: argparse.Namespace) -> int:
    if not args.root.is_dir():
        raise ConfigError(f"--root {args.root} is not a folder")
    hw = probe_hardware(args.root).with_runtimes(probe_runtimes(args.katago))
    profiles = _load_all(args.profiles_dir)[0]
    overrides = {"profile": args.profile} if args.profile else None
    profile, reasons = select(hw, overrides, profiles)
    choice, _ = choose_runtime(profile, hw.runtimes)
    engine, _ = choose_engine(profile, hw.runtimes)
    missing = [s.name for s in hw.runtimes.items if not s.available] if hw.runtimes else []
    health = None
    if args.health:
        health = _health(args.root, profile)
    network = network_plan(profile, hw, load_config(find_config(args.config)))
    if args.json:
        out: dict[str, Any] = {
            "hardware": hw.to_dict(),
            "profile": profile.name,
            "engine": engine,
            "runtime": choice.model_dump() if choice else None,
            "reasons": reasons,
            "runtimes_missing": missing,
            "profile_settings": profile.model_dump(),
            "network": network,
        }
        if health is not None:
            out["health"] = health
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    lines = _hardware_lines(hw)
    lines += ["Runtimes (this Python environment)", *_runtime_lines(hw)]
    lines += _profile_lines(profile, engine, choice.label if choice else None)
    lines += ["Why", *(f"  - {r}" for r in reasons)]
    lines += _network_lines(network)
    if health is not None:
        lines += ["Health", *(f"  {line}" for line in json.dumps(health, indent=2).splitlines())]
    print("\n".join(lines))
    return 0


# --- check-config ---------------------------------------------------------------------------------


def configure_check_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", type=Path, help="an agent config (TOML) to validate too")
    parser.add_argument("--profiles-dir", type=Path, default=None, help="profiles folder (default: shipped)")


def _load_all(directory: Path | None) -> tuple[list[Profile], list[str]]:
    """Every profile that validates, and one error text per file that does not."""
    directory = directory or profiles_dir()
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise ConfigError(f"no profiles (*.toml) in {directory}")
    good: list[Profile] = []
    errors: list[str] = []
    for path in files:
        try:
            good.append(load_profile(path))
        except ConfigError as exc:
            errors.append(str(exc))
    if not good:
        raise ConfigError("no valid profile:\n" + "\n".join(errors))
    return good, errors


def _check_agent_config(path: Path, profiles: list[Profile]) -> list[str]:
    config = load_config(path)  # raises ConfigError with positions
    problems: list[str] = []
    by_name = {p.name: p for p in profiles}
    forced = getattr(config, "profile", None)
    overrides = dict(getattr(config, "overrides", {}) or {})
    if forced and forced not in by_name:
        problems.append(f"{path}: profile {forced!r} does not exist (have: {', '.join(sorted(by_name))})")
    hidden = hidden_from_unit(Path(config.model)) if config.model and "/" in config.model else None
    if hidden:  # fine for `serve` run by hand; the installed service would not find it
        print(f"WARN {path}: model: {hidden}", file=sys.stderr)
    targets = [by_name[forced]] if forced in by_name else profiles
    if overrides:
        for profile in targets:
            try:
                apply_overrides(profile, overrides)
            except ConfigError as exc:
                problems.append(f"{path}: [overrides] do not fit profile {profile.name}: {exc}")
    return problems


def command_check_config(args: argparse.Namespace) -> int:
    directory = args.profiles_dir or profiles_dir()
    profiles, errors = _load_all(directory)
    for profile in profiles:
        print(f"ok  profile {profile.name}")
    for error in errors:
        print(f"BAD {error}", file=sys.stderr)
    if args.file is not None:
        problems = _check_agent_config(args.file, profiles)
        for problem in problems:
            print(f"BAD {problem}", file=sys.stderr)
        errors += problems
        if not problems:
            print(f"ok  config {args.file}")
    print(
        f"{len(profiles)} profiles valid in {directory}" + (f", {len(errors)} problem(s)" if errors else "")
    )
    return 1 if errors else 0
