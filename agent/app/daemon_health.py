"""The health document the daemon publishes: the device snapshot plus the daemon's own counters.

The device part (CPU, memory, temperatures, throttling, GPU) comes from ``agent.app.health`` when it
is installed; the daemon adds what only it knows: profile, engine, runtime plan, uptime, local
clients and the analysis service's counters. A source that fails is reported as absent with the
reason, never as zero.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from agent import __version__

logger = logging.getLogger(__name__)


def _device_snapshot(daemon: Any) -> dict[str, Any]:
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


def snapshot(daemon: Any) -> dict[str, Any]:
    plan = daemon.plan
    out: dict[str, Any] = {
        "time": time.time(),
        "agent": {
            "version": __version__,
            "uptime_s": round(time.time() - daemon.started_at, 1),
            "profile": plan.profile if plan else None,
            "engine": plan.engine if plan else None,
            "runtimes": [e.label for e in plan.runtimes] if plan else None,
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
