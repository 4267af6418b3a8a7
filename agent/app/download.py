"""Download a deployed network: resumable, bounded, and checked by sha256 before anything else.

The bytes go to ``<target>.part``; an interrupted download (a dropped link, a killed daemon)
continues from the part's size with an HTTP ``Range`` request (a server that ignores it sends the
whole file, and the part starts over). Nothing beyond ``max_bytes`` is ever written. Only a part
whose sha256 matches is renamed to ``target`` (after an fsync), so ``target`` is either absent or
the exact network the operator named; a mismatching part is deleted.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

from agent.errors import DeploymentError

logger = logging.getLogger(__name__)

CHUNK = 1 << 16
TIMEOUT_S = 30.0
Progress = Callable[[int, int | None], None]


def part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def _open(url: str, offset: int, timeout: float) -> tuple[IO[bytes], int | None, bool]:
    """(stream, bytes still to come or None, whether it starts at ``offset``)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
        try:
            fh = path.open("rb")
            size = path.stat().st_size
        except OSError as exc:
            raise DeploymentError(f"cannot read {path}: {exc.strerror or exc}") from exc
        fh.seek(min(offset, size))
        return fh, max(0, size - offset), True
    request = urllib.request.Request(url, headers={"User-Agent": "katago-edge"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(
            request, timeout=timeout
        )  # the scheme was checked (desired.check_url)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the part is already whole
            return io.BytesIO(), 0, True
        raise DeploymentError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DeploymentError(f"download of {url} failed: {getattr(exc, 'reason', exc)}") from exc
    length = response.headers.get("Content-Length")
    remaining = int(length) if length and length.isdigit() else None
    return response, remaining, response.status == 206


def download(
    url: str,
    target: Path,
    *,
    max_bytes: int,
    progress: Progress,
    stop: threading.Event,
    size: int | None = None,
    timeout: float = TIMEOUT_S,
) -> Path:
    """Bring ``url`` to ``<target>.part`` (resuming), at most ``max_bytes``; return the part's path.

    ``size`` (from the desired state) bounds it further and gives progress a total."""
    limit = min(max_bytes, size) if size else max_bytes
    part = part_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    if offset > limit:
        part.unlink()
        offset = 0
    if size and offset == size:
        return part
    stream, remaining, resumed = _open(url, offset, timeout)
    try:
        if not resumed:
            offset = 0  # the server sent the whole file: start the part over
        if offset:
            logger.info("deployment: resuming %s at %d bytes", target.name, offset)
        total = offset + remaining if remaining is not None else size
        if total is not None and total > limit:
            raise DeploymentError(
                f"{url}: {total} bytes, over the limit of {limit} bytes "
                f"({'the size in the desired state' if size and size <= max_bytes else 'max_network_bytes'})"
            )
        done = offset
        with part.open("ab" if offset else "wb") as out:
            while True:
                if stop.is_set():
                    raise DeploymentError("download interrupted: the agent is stopping")
                chunk = stream.read(CHUNK)
                if not chunk:
                    break
                done += len(chunk)
                if done > limit:
                    raise DeploymentError(f"{url}: more than the limit of {limit} bytes; download stopped")
                out.write(chunk)
                progress(done, total)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        raise DeploymentError(f"download of {url} failed: {exc}") from exc
    finally:
        stream.close()
    if size is not None and done != size:
        raise DeploymentError(f"{url}: got {done} bytes, the desired state says {size}")
    return part


def sha256_of(path: Path, stop: threading.Event) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            if stop.is_set():
                raise DeploymentError("checking interrupted: the agent is stopping")
            digest.update(chunk)
    return digest.hexdigest()


def check_and_place(part: Path, target: Path, sha256: str, stop: threading.Event) -> Path:
    """Rename ``part`` to ``target`` if its sha256 is ``sha256``; else delete it and raise."""
    got = sha256_of(part, stop)
    if got != sha256:
        part.unlink(missing_ok=True)
        raise DeploymentError(f"sha256 mismatch: the file has {got}, the deployment says {sha256}")
    os.replace(part, target)
    return target
