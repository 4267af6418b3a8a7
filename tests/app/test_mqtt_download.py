"""The device side of a network sent over MQTT (``agent.app.mqtt_download``) on a real Mosquitto,
through the daemon's own transport (``MqttTransport.watch``): chunks kept from an interrupted
transfer, a missing chunk, a missing manifest."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_support import Mosquitto, StubService

from agent.app.download import check_and_place
from agent.app.mqtt_download import chunks_part, mqtt_download
from agent.errors import DeploymentError
from agent.fleet.chunks import manifest_of, publish_model
from agent.fleet.rollout import FleetClient
from agent.transports.mqtt.settings import MqttSettings
from agent.transports.mqtt.transport import MqttTransport

pytestmark = pytest.mark.needs_mosquitto

CHUNK = 4 << 10


@pytest.fixture
def network(tmp_path: Path) -> tuple[Path, str]:
    """A 'network' of 10.5 chunks of distinct bytes, and its sha256."""
    data = hashlib.sha256(b"seed").digest() * ((10 * CHUNK + CHUNK // 2) // 32)
    path = tmp_path / "net.bin.gz"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.fixture
def ends(broker: Mosquitto) -> Iterator[tuple[FleetClient, MqttTransport]]:
    """The operator who publishes the chunks and the device's own transport, both connected."""
    operator = FleetClient(MqttSettings(host="127.0.0.1", port=broker.port))
    operator.connect()
    agent = MqttTransport(MqttSettings(host="127.0.0.1", port=broker.port), "dl1", StubService().handle_query)
    agent.start()
    try:
        assert agent.wait_connected(10)
        yield operator, agent
    finally:
        agent.stop()
        operator.close()


def _fetch(agent: MqttTransport, target: Path, sha: str, size: int, **kw: float) -> Path:
    seen: list[tuple[int, int | None]] = []
    part = mqtt_download(
        f"mqtt:katago/fleet/models/{sha}",
        target,
        link=lambda: agent,
        prefix="katago",
        sha256=sha,
        max_bytes=1 << 30,
        progress=lambda done, total: seen.append((done, total)),
        stop=threading.Event(),
        size=size,
        **kw,
    )
    assert seen[-1] == (size, size)
    return part


def test_mqtt_download__resumes_good_chunks__refetches_bad_ones__whole_sha256_checked(
    ends: tuple[FleetClient, MqttTransport], network: tuple[Path, str], tmp_path: Path
) -> None:
    source, sha = network
    size = source.stat().st_size
    operator, agent = ends
    publish_model(operator, source, sha, source.name, CHUNK)
    target = tmp_path / "store" / source.name
    target.parent.mkdir()
    # an interrupted transfer left chunks 0-3 right and chunk 4 wrong
    data = source.read_bytes()
    chunks_part(target).write_bytes(data[: 4 * CHUNK] + b"\0" * CHUNK)
    part = _fetch(agent, target, sha, size)
    assert part.read_bytes() == data
    assert check_and_place(part, target, sha, threading.Event()) == target
    assert target.read_bytes() == data and not part.exists()
    assert agent.stats()["received"] == 0  # no chunk was taken for a request


def test_mqtt_download__missing_chunk__missing_manifest__fail_with_the_reason(
    ends: tuple[FleetClient, MqttTransport], network: tuple[Path, str], tmp_path: Path
) -> None:
    source, sha = network
    size = source.stat().st_size
    operator, agent = ends
    target = tmp_path / source.name
    with pytest.raises(
        DeploymentError, match=rf"no manifest on katago/fleet/models/{sha}/manifest within 1 s"
    ):
        _fetch(agent, target, sha, size, manifest_timeout_s=1.0)
    publish_model(operator, source, sha, source.name, CHUNK)
    # chunk 7 cleared (an empty retained message: a new subscription receives nothing): asked
    # for again after each stall, then given up
    operator.publish(f"katago/fleet/models/{sha}/chunk/7", None)
    with pytest.raises(DeploymentError, match=r"chunks \[7\] of 11 not received within 1.2 s"):
        _fetch(agent, target, sha, size, stall_s=0.3)
    # a manifest that does not fit the chunks on the broker: the length is checked first
    manifest = manifest_of(source, sha, source.name, CHUNK)
    bigger = dict(manifest, size=size + CHUNK, count=12, chunks=[*manifest["chunks"], "00" * 32])
    operator.publish(f"katago/fleet/models/{sha}/manifest", bigger)
    with pytest.raises(DeploymentError, match=r"chunk 10 of 12: 2048 bytes, the manifest says 4096"):
        _fetch(agent, target, sha, size + CHUNK, stall_s=0.5)
    kept = chunks_part(target).read_bytes()
    assert kept[: 7 * CHUNK] == source.read_bytes()[: 7 * CHUNK]  # the good chunks stay
