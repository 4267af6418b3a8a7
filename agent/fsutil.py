"""Small file-system helpers shared by everything that writes models, configs and caches."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = 0o644) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsync, then rename.

    A reader sees the old file or the whole new one, never a torn write; on any error the temp
    file is removed and ``path`` is untouched. ``mode`` defaults to 0o644 (``mkstemp`` makes 0o600
    files, which the agent's service user could not read); ``None`` keeps 0o600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str, mode: int | None = 0o644) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), mode)


@contextlib.contextmanager
def file_lock(path: Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing), held for the ``with`` block.

    Two processes sharing a cache or a model store take turns; the kernel drops the lock when its
    holder dies, so a killed process never leaves a stale one. ``waiting`` is called once, before
    blocking, when another process holds the lock (to say so in the log)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _env_dir(var: str, xdg: str, xdg_default: str) -> Path:
    """A systemd-provided directory (first entry of a colon list), else the user's XDG folder."""
    value = os.environ.get(var)
    if value:
        return Path(value.split(":")[0])
    base = os.environ.get(xdg) or str(Path.home() / xdg_default)
    return Path(base) / "katago-edge"


def default_state_dir() -> Path:
    """Where the agent keeps its state (fetched networks): systemd's ``$STATE_DIRECTORY``, else
    ``$XDG_DATA_HOME/katago-edge``."""
    return _env_dir("STATE_DIRECTORY", "XDG_DATA_HOME", ".local/share")


def default_cache_dir() -> Path:
    """Where rebuildable things go (converted networks, KataGo binaries): ``$KATAGO_EDGE_CACHE``,
    systemd's ``$CACHE_DIRECTORY``, else ``$XDG_CACHE_HOME/katago-edge``. The one default."""
    env = os.environ.get("KATAGO_EDGE_CACHE")
    if env:
        return Path(env)
    return _env_dir("CACHE_DIRECTORY", "XDG_CACHE_HOME", ".cache")
