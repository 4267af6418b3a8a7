"""Small, forgiving readers for files under a probe root.

Every probe reads through these helpers so that ``root`` is honoured everywhere (a fixture tree
captured from a device reproduces that device's detection anywhere) and so that a missing or
unreadable file is ``None``, never an exception: on Android, ``/proc/stat`` and some sysfs files
are denied to apps; on a container, ``/sys/class/thermal`` may simply not exist.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

MAX_BYTES = 1 << 20  # no probe file is anywhere near this; guards against odd device nodes


def under(root: Path, path: str) -> Path:
    """``path`` (absolute, as on the device) resolved below ``root``."""
    return root / path.lstrip("/")


def read_text(root: Path, path: str) -> str | None:
    """The file's text, or None when it is missing or unreadable."""
    target = under(root, path)
    try:
        with target.open("rb") as fh:
            data = fh.read(MAX_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:  # PermissionError on Android, EIO on some sysfs nodes
        logger.debug("cannot read %s: %s", target, exc)
        return None
    return data.decode("utf-8", errors="replace")


def read_dt_strings(root: Path, path: str) -> list[str]:
    """A device-tree property as its NUL-separated strings (``compatible``, ``model``).

    Device-tree strings are NUL-terminated and lists are NUL-separated; some boards add a second
    trailing NUL. Empty pieces are dropped.
    """
    text = read_text(root, path)
    if text is None:
        return []
    return [part.strip() for part in text.split("\x00") if part.strip()]


def read_int(root: Path, path: str, base: int = 10) -> int | None:
    """The file's content as one integer, or None (missing, unreadable or not a number)."""
    text = read_text(root, path)
    if text is None:
        return None
    try:
        return int(text.strip().split()[0], base)
    except (ValueError, IndexError):
        return None


def read_key_values(text: str, sep: str = ":") -> list[tuple[str, str]]:
    """``key<sep>value`` lines (``/proc/cpuinfo``, ``/proc/meminfo``, ``build.prop``) in order."""
    pairs: list[tuple[str, str]] = []
    for line in text.splitlines():
        if sep not in line or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition(sep)
        pairs.append((key.strip(), value.strip()))
    return pairs
