"""Download a deployed network over MQTT, for devices that reach only the broker.

``katago-edge fleet deploy --transfer mqtt`` (``agent.fleet.chunks``) publishes the file, retained
and QoS 1, under the fleet prefix, keyed by its sha256; the desired state's ``url`` names it as
``mqtt:<p>/fleet/models/<sha256>``::

    <p>/fleet/models/<sha256>/manifest   {"network", "size", "chunk_size", "count",
                                          "chunks": [<sha256 of each chunk>], "sha256"}
    <p>/fleet/models/<sha256>/chunk/<n>  the raw bytes of chunk n (offset n * chunk_size)

The device reads the manifest (it must name the deployment's sha256 and size, within the size
limit), keeps the chunks of an earlier ``<network>.chunks.part`` whose sha256 still matches
(resume; its own name, because its length says nothing about what http's resume could skip), and asks for
the missing ones a window at a time: subscribing to a chunk's own topic makes the broker send its
retained message, and the topic is unsubscribed once the chunk is written. So at most ``WINDOW``
chunks are in flight whatever the network's size (the broker's per-client queue,
``max_queued_messages``, and its memory stay small). The subscriptions are QoS 0 on the daemon's
one connection (a device's login serves one connection): chunks take none of the requests'
flow-control slots (Receive Maximum) and never wait behind an unacknowledged request; a chunk
lost to a reconnect is asked for again after ``stall_s`` without progress.

Each chunk's length and sha256 are checked before it is written at its offset; a mismatch fails
the deployment (``chunk N of M: sha256 mismatch ...``: a chunk on the broker does not heal by
asking again). The part is fsynced and handed back; the caller checks the whole file's sha256
before anything reads it (``download.check_and_place``), as for http.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.app.desired import MQTT_URL_RE, SHA256_RE, json_object
from agent.app.download import Progress
from agent.errors import DeploymentError
from agent.transports.mqtt.topics import FleetTopics

logger = logging.getLogger(__name__)

WINDOW = 8  # chunks asked for at once
STALL_S = 20.0  # no chunk for this long: ask again for those outstanding
STALL_RETRIES = 3
MANIFEST_TIMEOUT_S = 30.0
MIN_CHUNK = 1 << 10
MAX_CHUNK = 4 << 20
MANIFEST = -1  # the inbox's key for the manifest


class TopicLink(Protocol):
    """What the download needs of the daemon's MQTT connection (``MqttTransport``)."""

    def watch(self, topic: str, handler: Callable[[bytes], None]) -> None: ...

    def unwatch(self, topic: str) -> None: ...


Link = Callable[[], TopicLink | None]
"""The connection now (the daemon may replace its transport on a reload), or None without MQTT."""


@dataclass(frozen=True)
class Manifest:
    network: str
    size: int
    chunk_size: int
    chunks: tuple[str, ...]
    sha256: str

    @property
    def count(self) -> int:
        return len(self.chunks)

    def span(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk ``index``."""
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)


def parse_manifest(payload: bytes, sha256: str, size: int | None, limit: int) -> Manifest:
    """The manifest in ``payload``, checked against the deployment (``sha256``, ``size``) and ``limit``."""
    if not payload:
        raise DeploymentError("the model's manifest was cleared (the operator ended the transfer)")
    doc = json_object(payload, "the model's manifest")
    if doc.get("sha256") != sha256:
        raise DeploymentError(
            f"the manifest names sha256 {doc.get('sha256')!r}, the deployment says {sha256}"
        )
    m_size, chunk_size, chunks = doc.get("size"), doc.get("chunk_size"), doc.get("chunks")
    if not isinstance(m_size, int) or isinstance(m_size, bool) or m_size <= 0:
        raise DeploymentError(f"the manifest's size {m_size!r} is not a positive integer")
    if size is not None and m_size != size:
        raise DeploymentError(f"the manifest says {m_size} bytes, the desired state says {size}")
    if m_size > limit:
        raise DeploymentError(f"the manifest says {m_size} bytes, over the limit of {limit} bytes")
    if not isinstance(chunk_size, int) or not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise DeploymentError(
            f"the manifest's chunk_size {chunk_size!r} is not within {MIN_CHUNK}..{MAX_CHUNK}"
        )
    count = -(-m_size // chunk_size)
    if (
        not isinstance(chunks, list)
        or len(chunks) != count
        or not all(isinstance(c, str) and SHA256_RE.fullmatch(c) for c in chunks)
    ):
        raise DeploymentError(f"the manifest must list {count} chunk sha256s (64 lower-case hex digits)")
    return Manifest(str(doc.get("network")), m_size, chunk_size, tuple(chunks), sha256)


def model_topics(url: str, prefix: str, sha256: str) -> FleetTopics:
    """The device's fleet topics if ``url`` names the model of ``sha256`` under its own prefix."""
    topics = FleetTopics(prefix)
    match = MQTT_URL_RE.fullmatch(url)
    if match is None or match.group(1) != sha256 or url != f"mqtt:{topics.model(sha256)}":
        raise DeploymentError(f"url {url!r}: this device reads MQTT transfers at mqtt:{topics.model(sha256)}")
    return topics


def chunks_part(target: Path) -> Path:
    return target.with_name(target.name + ".chunks.part")


def _kept_chunks(part: Path, manifest: Manifest, stop: threading.Event) -> set[int]:
    """The chunks an earlier, interrupted transfer left in ``part`` that still match their sha256."""
    if not part.is_file():
        return set()
    kept: set[int] = set()
    with part.open("rb") as fh:
        for index, expected in enumerate(manifest.chunks):
            if stop.is_set():
                raise DeploymentError("download interrupted: the agent is stopping")
            offset, length = manifest.span(index)
            fh.seek(offset)
            data = fh.read(length)
            if len(data) == length and hashlib.sha256(data).hexdigest() == expected:
                kept.add(index)
    return kept


class _Transfer:
    """One download: the inbox paho's thread fills, the subscriptions it holds."""

    def __init__(self, link: Link, topics: FleetTopics, sha256: str) -> None:
        self.link, self.topics, self.sha256 = link, topics, sha256
        self.inbox: queue.Queue[tuple[int, bytes]] = queue.Queue()
        self.watched: dict[int, str] = {}

    def ask(self, index: int) -> None:
        """Subscribe to chunk ``index`` (or the manifest): the broker sends its retained message."""
        link = self.link()
        if link is None:
            raise DeploymentError("no MQTT connection to fetch the network over")
        topic = (
            self.topics.model_manifest(self.sha256)
            if index == MANIFEST
            else self.topics.model_chunk(self.sha256, index)
        )
        link.unwatch(topic)  # again after a stall: a fresh subscription re-sends the retained message
        link.watch(topic, lambda payload: self.inbox.put((index, payload)))
        self.watched[index] = topic

    def drop(self, index: int) -> None:
        topic = self.watched.pop(index, None)
        link = self.link()
        if topic is not None and link is not None:
            link.unwatch(topic)

    def close(self) -> None:
        for index in list(self.watched):
            self.drop(index)


def mqtt_download(
    url: str,
    target: Path,
    *,
    link: Link,
    prefix: str,
    sha256: str,
    max_bytes: int,
    progress: Progress,
    stop: threading.Event,
    size: int | None = None,
    stall_s: float = STALL_S,
    manifest_timeout_s: float = MANIFEST_TIMEOUT_S,
) -> Path:
    """Bring the chunks of ``url`` to ``<target>.chunks.part`` (resuming by chunk); return its path."""
    topics = model_topics(url, prefix, sha256)
    limit = min(max_bytes, size) if size else max_bytes
    transfer = _Transfer(link, topics, sha256)
    try:
        transfer.ask(MANIFEST)
        manifest = _wait_manifest(transfer, sha256, size, limit, manifest_timeout_s, stop)
        transfer.drop(MANIFEST)
        part = chunks_part(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        kept = _kept_chunks(part, manifest, stop)
        if kept:
            logger.info(
                "deployment: resuming %s with %d of %d chunks kept", target.name, len(kept), manifest.count
            )
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            os.ftruncate(fd, manifest.size)
            _fetch_chunks(transfer, manifest, fd, kept, progress, stop, stall_s)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise DeploymentError(f"download of {url} failed: {exc}") from exc
    finally:
        transfer.close()
    return part


def _wait_manifest(
    transfer: _Transfer, sha256: str, size: int | None, limit: int, timeout: float, stop: threading.Event
) -> Manifest:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop.is_set():
            raise DeploymentError("download interrupted: the agent is stopping")
        try:
            index, payload = transfer.inbox.get(timeout=0.2)
        except queue.Empty:
            continue
        if index == MANIFEST:
            return parse_manifest(payload, sha256, size, limit)
    raise DeploymentError(
        f"no manifest on {transfer.topics.model_manifest(sha256)} within {timeout:.0f} s: the operator "
        "has not published the network there, or cleared it (fleet deploy --transfer mqtt publishes it)"
    )


def _fetch_chunks(
    transfer: _Transfer,
    manifest: Manifest,
    fd: int,
    kept: set[int],
    progress: Progress,
    stop: threading.Event,
    stall_s: float,
) -> None:
    missing = [i for i in range(manifest.count) if i not in kept]
    done = sum(manifest.span(i)[1] for i in kept)
    progress(done, manifest.size)
    asked: set[int] = set()
    last = time.monotonic()
    stalls = 0
    while missing or asked:
        if stop.is_set():
            raise DeploymentError("download interrupted: the agent is stopping")
        while missing and len(asked) < WINDOW:
            index = missing.pop(0)
            transfer.ask(index)
            asked.add(index)
        try:
            index, payload = transfer.inbox.get(timeout=0.2)
        except queue.Empty:
            if time.monotonic() - last < stall_s:
                continue
            stalls += 1
            if stalls > STALL_RETRIES:
                raise DeploymentError(
                    f"chunks {sorted(asked)} of {manifest.count} not received within "
                    f"{stalls * stall_s:g} s (did the operator clear the model's topics?)"
                ) from None
            logger.warning("deployment: no chunk for %g s; asking again for %s", stall_s, sorted(asked))
            for index in asked:
                transfer.ask(index)
            last = time.monotonic()
            continue
        if index not in asked:
            continue  # a copy sent again after a re-subscription, or a late manifest
        offset, length = manifest.span(index)
        if not payload:
            raise DeploymentError(
                f"chunk {index} of {manifest.count} was cleared (the operator ended the transfer)"
            )
        if len(payload) != length:
            raise DeploymentError(
                f"chunk {index} of {manifest.count}: {len(payload)} bytes, the manifest says {length}"
            )
        got = hashlib.sha256(payload).hexdigest()
        if got != manifest.chunks[index]:
            raise DeploymentError(
                f"chunk {index} of {manifest.count}: sha256 mismatch: the chunk has {got}, "
                f"the manifest says {manifest.chunks[index]}"
            )
        os.pwrite(fd, payload, offset)
        transfer.drop(index)
        asked.discard(index)
        done += length
        progress(done, manifest.size)
        last, stalls = time.monotonic(), 0
