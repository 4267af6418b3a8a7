"""Send a network to the fleet over MQTT, for devices that reach only the broker (operator side).

``katago-edge fleet deploy FILE --transfer mqtt`` publishes the file before any desired state,
retained and QoS 1, under the fleet prefix and keyed by its sha256 (the device side, its checks
and its resume are in ``agent.app.mqtt_download``)::

    <p>/fleet/models/<sha256>/chunk/<n>  the raw bytes of chunk n (offset n * chunk_size; 256 KiB)
    <p>/fleet/models/<sha256>/manifest   {"network", "size", "chunk_size", "count",
                                          "chunks": [<sha256 of each chunk>], "sha256"}

The chunks go first and the manifest last, each acknowledged by the broker, so a device that sees
the manifest finds every chunk. Retained, they reach a device that connects later too; the
desired state's ``url`` is ``mqtt:<p>/fleet/models/<sha256>``. Only the operator may publish there
(the ACL in docs/mqtt.md). When the rollout ends and no target still waits for the network, the
chunks are cleared (an empty retained message on each topic); ``fleet deployments --clean``
clears those left for offline devices. A 256 KiB chunk is far below Mosquitto's default
``message_size_limit`` (none: MQTT's 256 MiB).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from agent.errors import ConfigError
from agent.transports.mqtt.topics import FleetTopics

logger = logging.getLogger(__name__)

CHUNK_SIZE = 256 << 10
MIN_CHUNK = 1 << 10
MAX_CHUNK = 4 << 20  # the device refuses larger ones (agent.app.mqtt_download)


class Publisher(Protocol):
    """What sending needs of the operator's connection (``rollout.FleetClient``): a QoS 1 publish
    that returns once the broker acknowledged it, and raises when the broker refused it."""

    topics: FleetTopics

    def publish(self, topic: str, payload: dict[str, Any] | bytes | None, retain: bool = True) -> None: ...


def _chunks(path: Path, chunk_size: int) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_size):
            yield chunk


def manifest_of(path: Path, sha256: str, network: str, chunk_size: int = CHUNK_SIZE) -> dict[str, Any]:
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise ConfigError(f"--chunk-size must be within {MIN_CHUNK}..{MAX_CHUNK} bytes")
    chunks = [hashlib.sha256(c).hexdigest() for c in _chunks(path, chunk_size)]
    return {
        "network": network,
        "size": path.stat().st_size,
        "chunk_size": chunk_size,
        "count": len(chunks),
        "chunks": chunks,
        "sha256": sha256,
    }


def publish_model(
    client: Publisher, path: Path, sha256: str, network: str, chunk_size: int = CHUNK_SIZE
) -> str:
    """Publish ``path`` as retained chunks, then its manifest; return the desired state's url."""
    manifest = manifest_of(path, sha256, network, chunk_size)
    digest = hashlib.sha256()
    for index, chunk in enumerate(_chunks(path, chunk_size)):
        if hashlib.sha256(chunk).hexdigest() != manifest["chunks"][index]:
            raise ConfigError(f"{path} changed while it was being sent; try again")
        digest.update(chunk)
        client.publish(client.topics.model_chunk(sha256, index), chunk)
    if digest.hexdigest() != sha256:
        raise ConfigError(f"{path} does not have sha256 {sha256} (it changed?)")
    client.publish(client.topics.model_manifest(sha256), manifest)
    logger.info("sent %s over MQTT: %d chunks of %d bytes", network, manifest["count"], chunk_size)
    return f"mqtt:{client.topics.model(sha256)}"


def clear_model(client: Publisher, sha256: str, count: int) -> None:
    """Remove the retained manifest (first: a device then stops asking) and ``count`` chunks."""
    client.publish(client.topics.model_manifest(sha256), None)
    for index in range(count):
        client.publish(client.topics.model_chunk(sha256, index), None)
