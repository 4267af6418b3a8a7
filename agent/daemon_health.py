"""The health document the daemon publishes: the device snapshot plus the daemon's own counters.

The device part (CPU, memory, temperatures, throttling, GPU) comes from ``agent.health`` when it
is installed; the daemon adds what only it knows: profile, engine, runtime plan, uptime, local
clients and the analysis service's counters. A source that fails is reported as absent with the
reason, never as zero.
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

from agent import __version__

logger = logging.getLogger(__name__)


def _device_snapshot(daemon: Any) -> dict[str, Any]:
    try:
        health = importlib.import_module("agent.health")
    except ImportError:
        return {"device": None, "device_absent": "agent.health not installed"}
    collect = getattr(health, "snapshot", None) or getattr(health, "collect_health", None)
    if collect is None:
        return {"device": None, "device_absent": "agent.health has no snapshot()"}
    engine_stats = daemon.engine.stats() if daemon.engine is not None else None
    try:
        result = collect(root=daemon.config.root, engine_stats=engine_stats)
    except TypeError:
        result = collect(daemon.config.root)
    data = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    return {"device": data}


def snapshot(daemon: Any) -> dict[str, Any]:
    plan = daemon.plan
    transports = {
        name: {"clients": getattr(t, "clients", None), "pending": getattr(t, "pending", None)}
        for name, t in list(daemon.transports.items())
        if name != "mqtt"
    }
    out: dict[str, Any] = {
        "time": time.time(),
        "agent": {
            "version": __version__,
            "uptime_s": round(time.time() - daemon._started, 1),
            "profile": plan.profile if plan else None,
            "engine": plan.engine if plan else None,
            "runtimes": [f"{r}/{p}" for r, p in plan.runtimes] if plan else None,
            "network": daemon.config.model,
        },
        "local": transports,
        "service": daemon.service.stats() if daemon.service is not None else None,
    }
    out.update(_device_snapshot(daemon))
    return out
