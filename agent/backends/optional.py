"""Optional runtime packages: imported when a network is loaded or built, never at start-up."""

from __future__ import annotations

import importlib
from types import ModuleType

from agent.errors import RuntimeUnavailable


def import_optional(module: str, install: str) -> ModuleType:
    """``module`` imported, or ``RuntimeUnavailable`` (``install`` says how to get it) when missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeUnavailable(install) from exc
