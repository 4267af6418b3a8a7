"""Logging set-up shared by every command: one format, level from flags or environment."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Configure the root logger on stderr (stdout is reserved for protocol output).

    ``KATAGO_EDGE_LOG_LEVEL`` overrides the level derived from the flags.
    """
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 0 else logging.INFO)
    env = os.environ.get("KATAGO_EDGE_LOG_LEVEL")
    if env:
        level = (
            logging.getLevelName(env.upper()) if isinstance(logging.getLevelName(env.upper()), int) else level
        )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_katago_edge", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler._katago_edge = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
