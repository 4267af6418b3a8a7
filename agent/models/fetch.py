"""Get KataGo networks into the model store: ``katago-edge fetch-model PATH|URL|katrain|NAME``.

Sources:

* a **path** to a network file: copied into the store (skipped when an identical file is there);
* an **http(s) URL**: streamed to a temp file while hashing; ``--sha256`` is checked before the
  file gets its final name;
* ``katrain`` (or ``katrain==VERSION``): the PyPI package ``katrain`` ships the network
  ``b10c384h6nbttflrs.bin.gz`` under ``katrain/models/``; ``pip download --no-deps katrain``
  fetches the wheel (about 106 MB) into a temp folder and the network is extracted from it;
* a **name** already in the store (``b10c384h6nbttflrs`` or ``b10c384h6nbttflrs.bin.gz``).

Every write is atomic (temp file in the store folder, fsync, rename), so the store never holds a
torn file; every stored file is parsed once (:func:`agent.network.reader.read_network`) before it
is given its final name, so the store only holds readable networks. On a terminal a rich progress
bar shows download progress.

The store is the one the agent itself reads: ``model_store_dir`` of the agent config
(``agent.app.config.AgentConfig``: ``model_store``, else ``<state_dir>/models``), found as ``serve``
finds it (``--config``, ``$CONFIGURATION_DIRECTORY/agent.toml``, ``/etc/katago-edge/agent.toml``,
else the defaults: ``$STATE_DIRECTORY`` or ``$XDG_DATA_HOME/katago-edge``). So after
``install.sh``, ``sudo katago-edge fetch-model katrain`` lands in ``/var/lib/katago-edge/models``.

A download that fails (an offline machine) says how to do without it: copy the file into the
store under the name the agent looks for, or point the agent at a local network file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from agent.errors import ModelStoreError, NetworkFileError
from agent.fsutil import default_state_dir, sha256_file

logger = logging.getLogger(__name__)

KATRAIN_MEMBER = "katrain/models/b10c384h6nbttflrs.bin.gz"
NETWORK_SUFFIXES = (".bin.gz", ".txt.gz", ".bin", ".txt", ".gz")
CHUNK = 1 << 20
HTTP_TIMEOUT_S = 60
PIP_TIMEOUT_S = 1800


def offline_hint(source: str, target: Path) -> str:
    """What to do when ``source`` cannot be downloaded into ``target`` (no internet here)."""
    return (
        f"without internet here, bring the network over: put {target.name} into {target.parent} "
        f"(where the agent looks; `katago-edge fetch-model {source}` on a machine with internet "
        "prints where it stored it), or use a local .bin.gz file: `--model PATH` "
        '(install.sh, serve) or model = "PATH" in the agent config'
    )


# Folders the installed unit cannot see (systemd/katago-edge.service: ProtectHome=yes, PrivateTmp=yes).
UNIT_HIDDEN = (Path("/home"), Path("/root"), Path("/run/user"), Path("/tmp"), Path("/var/tmp"))


def hidden_from_unit(path: Path) -> str | None:
    """Why the systemd-run agent cannot read ``path`` (None: nothing in the unit hides it)."""
    absolute = Path(os.path.abspath(path.expanduser()))
    for folder in UNIT_HIDDEN:
        if absolute == folder or folder in absolute.parents:
            how = "ProtectHome=yes" if folder.parts[1] in ("home", "root", "run") else "PrivateTmp=yes"
            return (
                f"{absolute} is under {folder}, which the katago-edge service does not see ({how} in its "
                f"unit): `sudo katago-edge fetch-model {absolute}` copies it into the agent's model store"
            )
    return None


def fetch_model(
    source: str | Path,
    dest_dir: Path | None = None,
    sha256: str | None = None,
    *,
    store: Path | None = None,
    force: bool = False,
    pip_args: Sequence[str] = (),
) -> Path:
    """Bring ``source`` into the store (``dest_dir``, alias ``store``) and return its path there.

    ``sha256`` (hex) is checked for every kind of source. ``force`` re-downloads even when the
    store already has the file. ``pip_args`` are extra ``pip download`` options (e.g. an index).
    """
    dest = Path(dest_dir or store or default_state_dir() / "models").expanduser()
    text = str(source).strip()
    expected = sha256.lower().strip() if sha256 else None
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelStoreError(f"cannot create the model store {dest}: {exc}") from exc
    if text.lower().startswith(("http://", "https://")):
        return _from_url(text, dest, expected, force)
    if text == "katrain" or text.startswith("katrain=="):
        return _from_katrain(text, dest, expected, force, pip_args)
    path = Path(text).expanduser()
    if path.is_file():
        return _from_path(path, dest, expected)
    for cand in (dest / text, *(dest / (text + s) for s in NETWORK_SUFFIXES)):
        if cand.is_file():
            _check_sha(cand, expected, str(cand))
            return cand
    hidden = hidden_from_unit(path) if path.is_absolute() and os.environ.get("INVOCATION_ID") else None
    raise ModelStoreError(
        f"network {text!r} not found: give a path, an http(s) URL, 'katrain', or a name in {dest}"
        + (f" ({hidden})" if hidden else "")
    )


def _from_path(path: Path, dest: Path, expected: str | None) -> Path:
    target = dest / path.name
    digest = sha256_file(path)
    if expected and digest != expected:
        raise ModelStoreError(f"{path}: sha256 {digest} does not match the expected {expected}")
    if target.resolve() == path.resolve():
        return target
    if target.is_file() and sha256_file(target) == digest:
        logger.info("%s is already in the store as %s", path, target)
        return target
    with path.open("rb") as src, _atomic_target(target) as (tmp, out):
        shutil.copyfileobj(src, out, CHUNK)
        _finish(out, tmp, target.name)
    logger.info("stored %s as %s", path, target)
    return target


def _from_url(url: str, dest: Path, expected: str | None, force: bool) -> Path:
    name = Path(urllib.parse.urlparse(url).path).name
    if not name.lower().endswith(NETWORK_SUFFIXES):
        raise ModelStoreError(f"{url}: the URL does not name a KataGo network file (.bin.gz, .txt.gz, ...)")
    target = dest / name
    if target.is_file() and not force and (expected is None or sha256_file(target) == expected):
        logger.info("%s is already in the store", target)
        return target
    try:
        with (
            urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as resp,
            _atomic_target(target) as (tmp, out),
        ):
            total = int(resp.headers.get("Content-Length") or 0) or None
            _copy_checked(
                resp,
                out,
                f"downloading {name}",
                total,
                expected,
                lambda got: f"{url}: sha256 {got} does not match the expected {expected}",
            )
            _finish(out, tmp, name)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise ModelStoreError(f"downloading {url} failed: {exc}; {offline_hint(url, target)}") from exc
    logger.info("downloaded %s to %s", url, target)
    return target


def _from_katrain(spec: str, dest: Path, expected: str | None, force: bool, pip_args: Sequence[str]) -> Path:
    target = dest / Path(KATRAIN_MEMBER).name
    if target.is_file() and not force and (expected is None or sha256_file(target) == expected):
        logger.info("%s is already in the store", target)
        return target
    with tempfile.TemporaryDirectory(prefix="katago-edge-katrain-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp,
               *pip_args, spec]  # fmt: skip
        logger.info("running %s", " ".join(cmd))
        interactive = sys.stderr.isatty()
        try:
            proc = subprocess.run(
                cmd, timeout=PIP_TIMEOUT_S, check=False, text=True,
                stdout=None if interactive else subprocess.PIPE, stderr=None if interactive else subprocess.STDOUT,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ModelStoreError(f"pip download {spec} failed: {exc}; {offline_hint(spec, target)}") from exc
        if proc.returncode != 0:
            tail = (proc.stdout or "").strip().splitlines()[-3:]
            raise ModelStoreError(
                f"pip download {spec} failed (exit {proc.returncode}): {' | '.join(tail)}; "
                + offline_hint(spec, target)
            )
        wheels = sorted(Path(tmp).glob("katrain-*.whl"))
        if not wheels:
            raise ModelStoreError(f"pip download {spec} produced no katrain wheel")
        try:
            with (
                zipfile.ZipFile(wheels[-1]) as wheel,
                wheel.open(KATRAIN_MEMBER) as src,
                _atomic_target(target) as (tmp_path, out),
            ):
                _copy_checked(
                    src,
                    out,
                    f"extracting {target.name}",
                    wheel.getinfo(KATRAIN_MEMBER).file_size,
                    expected,
                    lambda got: f"{wheels[-1].name}: {KATRAIN_MEMBER} has sha256 {got}, expected {expected}",
                )
                _finish(out, tmp_path, target.name)
        except KeyError as exc:
            raise ModelStoreError(f"{wheels[-1].name} does not contain {KATRAIN_MEMBER}") from exc
        except zipfile.BadZipFile as exc:
            raise ModelStoreError(f"{wheels[-1].name} is not a valid wheel: {exc}") from exc
    logger.info("extracted %s from %s into %s", KATRAIN_MEMBER, spec, target)
    return target


# --- helpers ---------------------------------------------------------------------------------------


def _check_sha(path: Path, expected: str | None, what: str) -> None:
    if expected and (got := sha256_file(path)) != expected:
        raise ModelStoreError(f"{what}: sha256 {got} does not match the expected {expected}")


@contextmanager
def _atomic_target(target: Path) -> Iterator[tuple[Path, IO[bytes]]]:
    """A temp file beside ``target``; the body must call :func:`_finish`, else it is removed."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            yield tmp, out
        if tmp.exists():
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _copy_checked(
    src: IO[bytes],
    out: IO[bytes],
    label: str,
    total: int | None,
    expected: str | None,
    mismatch: Callable[[str], str],
) -> None:
    """Copy ``src`` into ``out`` in chunks with a progress bar; with ``expected`` set, a different
    sha256 is a ``ModelStoreError(mismatch(sha256))``."""
    digest = hashlib.sha256()
    with _progress(label, total) as advance:
        while chunk := src.read(CHUNK):
            out.write(chunk)
            digest.update(chunk)
            advance(len(chunk))
    if expected and digest.hexdigest() != expected:
        raise ModelStoreError(mismatch(digest.hexdigest()))


def _finish(out: IO[bytes], tmp: Path, name: str) -> None:
    """Flush and fsync, then check the temp file parses as a network (with the target's suffix)."""
    from agent.network.reader import decode_network_file

    out.flush()
    os.fsync(out.fileno())
    try:
        decode_network_file(tmp.read_bytes(), name, name)
    except NetworkFileError as exc:
        raise ModelStoreError(f"{name} is not a usable KataGo network: {exc}") from exc


@contextmanager
def _progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    if not sys.stderr.isatty():
        yield lambda _n: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), transient=True) as bar:  # fmt: skip
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
