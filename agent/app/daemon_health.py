"""The health document the daemon publishes: the device snapshot plus the daemon's own counters.

The device part (CPU, memory, temperatures, throttling, GPU) comes from ``agent.app.health`` when it
is installed; the daemon adds what only it knows: profile, engine, runtime plan, uptime, local
clients and the analysis service's counters. A source that fails is reported as absent with the
reason, never as zero.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from agent import __version__

if TYPE_CHECKING:
    from agent.app.config import AgentConfig
    from agent.app.deployment import Deployer
    from agent.app.health import HealthCollector
    from agent.app.service_switch import ServiceSwitch
    from agent.app.startup import Plan
    from agent.app.thermal import ThermalGuard
    from agent.engines.base import Engine
    from agent.models.serving import NetworkReport
    from agent.protocol.service import AnalysisService

logger = logging.getLogger(__name__)


class DaemonState(Protocol):
    """What the health document reads from the daemon (:class:`agent.app.daemon.Daemon`)."""

    config: AgentConfig
    plan: Plan | None
    network: NetworkReport | None
    engine: Engine | None
    service: AnalysisService | None
    switch: ServiceSwitch | None
    deployer: Deployer | None
    thermal: ThermalGuard | None
    health_collector: HealthCollector | None  # made on the first snapshot (CPU use between snapshots)
    started_at: float

    def local_counts(self) -> dict[str, dict[str, int]]: ...


def _device_snapshot(daemon: DaemonState) -> dict[str, Any]:
    """Device health from ``agent.app.health`` (one collector per daemon: CPU use between snapshots)."""
    from agent.app.health import HealthCollector

    if daemon.health_collector is None:
        plan = daemon.plan
        daemon.health_collector = HealthCollector(
            root=daemon.config.root,
            model_store=daemon.config.model_store_dir,
            versions={"profile": plan.profile if plan else None, "network": daemon.config.model},
            thermal=daemon.thermal,
        )
    engine_stats = daemon.engine.stats() if daemon.engine is not None else None
    return {"device": daemon.health_collector.snapshot(engine_stats).to_dict()}


def snapshot(daemon: DaemonState) -> dict[str, Any]:
    plan = daemon.plan
    out: dict[str, Any] = {
        "time": time.time(),
        "agent": {
            "version": __version__,
            "uptime_s": round(time.time() - daemon.started_at, 1),
            "profile": plan.profile if plan else None,
            "engine": plan.engine if plan else None,
            "runtimes": [e.label for e in plan.runtimes] if plan else None,
            # what the profile and config overrides settled on (runtime threads 0: the runtime's default)
            "search_threads": plan.threads if plan else None,
            "runtime_threads": plan.runtime_threads if plan else None,
            "batch_size": plan.batch_size if plan else None,
            "model": daemon.config.model,
        },
        "network": daemon.network.to_json() if daemon.network is not None else None,
        "local": daemon.local_counts(),
        "service": daemon.service.stats() if daemon.service is not None else None,
        "deployment": daemon.deployer.report() if daemon.deployer is not None else None,
        "thermal_guard": {"refused": daemon.switch.refused, "capped": daemon.switch.capped}
        if daemon.switch is not None
        else None,
    }
    out.update(_device_snapshot(daemon))
    return out
