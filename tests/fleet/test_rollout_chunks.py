"""A network sent over MQTT (``fleet deploy --transfer mqtt``) to a device that reaches only the
broker: real Mosquitto, a real daemon serving b6c96 (numpy: nothing to convert, so the test stays
short), b7c96h3tfrs-test5-cnorm as retained chunks. A chunk corrupted on the broker fails the
deployment with the chunk's sha256 and the old network keeps serving; the operator's next deploy
sends the chunks again, the device keeps the good ones it has (resume) and ends serving b7c96;
the chunks are cleared from the broker once the rollout is done."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from edge_fixtures import model_file
from fleet_support import Device, EventLog, Mosquitto, cli, publish_raw, wait_until
from mqtt_support import read_retained

from agent.app.desired import parse_desired
from agent.app.mqtt_download import Manifest, model_topics, parse_manifest
from agent.errors import DeploymentError
from agent.fleet.chunks import CHUNK_SIZE, manifest_of, publish_model
from agent.fleet.rollout import FleetClient
from agent.fsutil import sha256_file
from agent.transports.mqtt.settings import MqttSettings

pytestmark = [pytest.mark.needs_models, pytest.mark.needs_mosquitto, pytest.mark.slow]

NUMPY_ONLY = 'overrides = {runtimes = [{runtime = "numpy", precision = "fp32"}]}\n'


def test_rollout_chunks__corrupt_chunk_fails__deploy_over_mqtt_resumes_and_serves__chunks_cleared(
    models_dir: Path, short_tmp: Path, broker: Mosquitto
) -> None:
    b6, b7 = model_file(models_dir, "b6c96").resolve(), model_file(models_dir, "b7c96-cnorm").resolve()
    sha, size = sha256_file(b7), b7.stat().st_size
    count = -(-size // CHUNK_SIZE)
    base = f"katago/fleet/models/{sha}"
    device = Device(short_tmp, "m1", broker, b6, config=NUMPY_ONLY)
    events = EventLog(broker.port)
    operator = FleetClient(MqttSettings(host="127.0.0.1", port=broker.port))
    try:
        device.start().wait_ready()
        old_name = device.model_name()

        # the operator's chunks, then chunk 2 replaced on the broker by wrong bytes of the same length
        operator.connect()
        url = publish_model(operator, b7, sha, b7.name)
        assert url == f"mqtt:{base}"
        good = b7.read_bytes()[2 * CHUNK_SIZE : 3 * CHUNK_SIZE]
        assert publish_raw(broker.port, f"{base}/chunk/2", bytes(b ^ 0xFF for b in good)) in (
            0,
            16,
        )  # 16: no subscriber
        desired = {"id": "dep-bad", "network": b7.name, "sha256": sha, "size": size, "url": url}
        assert publish_raw(broker.port, "katago/m1/deployment/desired", json.dumps(desired).encode()) == 0
        wait_until(lambda: events.states("m1", "dep-bad")[-1:] == ["failed"], 60, "m1 failed")
        error = events.of("m1", "dep-bad")[-1]["error"]
        expected = manifest_of(b7, sha, b7.name)["chunks"][2]
        assert re.fullmatch(
            rf"chunk 2 of {count}: sha256 mismatch: the chunk has [0-9a-f]{{64}}, the manifest says {expected}",
            error,
        ), error
        assert events.states("m1", "dep-bad") == ["pending", "downloading", "failed"]
        assert device.model_name() == old_name  # the old network never stopped serving
        device.analyse()
        assert device.deployment()["current"]["network"] == b6.name
        operator.close()

        # the operator deploys it over MQTT (the chunks sent again, chunk 2 whole): the device
        # keeps the chunks it checked already and ends serving b7c96
        deploy = cli(
            "fleet", "deploy", str(b7), "--transfer", "mqtt", "--device", "m1", "--id", "dep-mqtt",
            "--timeout", "120", "--broker", f"127.0.0.1:{broker.port}",
        )  # fmt: skip
        print(deploy.stdout, deploy.stderr)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        assert f"sent {b7} over MQTT as {count} retained chunks at mqtt:{base}" in deploy.stdout
        assert "1 active, 0 failed" in deploy.stdout
        assert f"cleared the {count} chunks from the broker" in deploy.stdout
        assert events.states("m1", "dep-mqtt") == [
            "pending",
            "downloading",
            "verifying",
            "preparing",
            "active",
        ]
        kept = re.search(rf"resuming {re.escape(b7.name)} with (\d+) of {count} chunks kept", device.log())
        assert kept and 2 <= int(kept.group(1)) < count, device.log()[-3000:]
        print(kept.group(0))
        new_name = device.model_name()
        assert new_name != old_name and "b7c96" in new_name
        device.analyse()
        dep = device.deployment()
        assert (dep["id"], dep["state"], dep["current"]["sha256"]) == ("dep-mqtt", "active", sha)
        assert (short_tmp / "m1" / "state" / "models" / b7.name).is_file()

        # nothing of the transfer is left on the broker
        left = read_retained(broker.port, [f"{base}/manifest", f"{base}/chunk/0", f"{base}/chunk/2"])
        assert left == {}, left
    finally:
        events.close()
        device.stop()


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"sha256": "ab" * 32}, "the manifest names sha256"),
        ({"size": 5}, "the manifest says 5 bytes, the desired state says"),
        ({"chunk_size": 10}, "chunk_size 10 is not within"),
        ({"chunks": ["00" * 32]}, "must list"),
    ],
)
def test_rollout_chunks__manifest_refused_with_the_reason(
    models_dir: Path, change: dict[str, object], why: str
) -> None:
    b7 = model_file(models_dir, "b7c96-cnorm")
    sha, size = sha256_file(b7), b7.stat().st_size
    manifest = manifest_of(b7, sha, b7.name)
    parsed = parse_manifest(json.dumps(manifest).encode(), sha, size, 1 << 30)
    assert isinstance(parsed, Manifest) and parsed.count == -(-size // CHUNK_SIZE)
    assert parsed.span(parsed.count - 1) == (
        (parsed.count - 1) * CHUNK_SIZE,
        size - (parsed.count - 1) * CHUNK_SIZE,
    )
    with pytest.raises(DeploymentError, match=why):
        parse_manifest(json.dumps({**manifest, **change}).encode(), sha, size, 1 << 30)
    with pytest.raises(DeploymentError, match=f"over the limit of {size - 1} bytes"):
        parse_manifest(json.dumps(manifest).encode(), sha, None, size - 1)


SHA = "ab" * 32


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({"url": "mqtt:katago/fleet/models/" + "cd" * 32, "network": "n.bin.gz"}, "not keyed by its sha256"),
        ({"url": "mqtt:katago/models/" + SHA, "network": "n.bin.gz"}, "mqtt:<prefix>/fleet/models/<sha256>"),
        (
            {"url": "mqtt:kat+/fleet/models/" + SHA, "network": "n.bin.gz"},
            "mqtt:<prefix>/fleet/models/<sha256>",
        ),
        ({"url": "mqtt:katago/fleet/models/" + SHA}, "bad network name None"),
    ],
)
def test_rollout_chunks__desired_mqtt_url_refused_with_the_reason(doc: dict[str, str], why: str) -> None:
    with pytest.raises(DeploymentError, match=re.escape(why)):
        parse_desired(json.dumps({"id": "d1", "sha256": SHA, **doc}).encode())


def test_rollout_chunks__desired_mqtt_url_accepted__device_reads_only_its_own_prefix() -> None:
    url = f"mqtt:katago/fleet/models/{SHA}"
    desired = parse_desired(
        json.dumps({"id": "d1", "sha256": SHA, "url": url, "network": "n.bin.gz"}).encode()
    )
    assert desired is not None and (desired.url, desired.network) == (url, "n.bin.gz")
    assert model_topics(url, "katago", SHA).model_chunk(SHA, 3) == f"katago/fleet/models/{SHA}/chunk/3"
    with pytest.raises(DeploymentError, match=f"reads MQTT transfers at mqtt:site/fleet/models/{SHA}"):
        model_topics(url, "site", SHA)


def test_rollout_chunks__deployments_clean_clears_all_but_a_running_rollout(
    models_dir: Path, short_tmp: Path, broker: Mosquitto
) -> None:
    b6, b7 = model_file(models_dir, "b6c96").resolve(), model_file(models_dir, "b7c96-cnorm").resolve()
    operator = FleetClient(MqttSettings(host="127.0.0.1", port=broker.port))
    operator.connect()
    try:
        sent = {f.name: (sha256_file(f), -(-f.stat().st_size // (64 << 10))) for f in (b6, b7)}
        for f in (b6, b7):
            publish_model(operator, f, sent[f.name][0], f.name, 64 << 10)
        running = {"id": "dep-run", "sha256": sent[b7.name][0], "network": b7.name, "state": "rolling"}
        operator.publish("katago/fleet/rollouts/dep-run", running)
    finally:
        operator.close()
    clean = cli("fleet", "deployments", "--clean", "--broker", f"127.0.0.1:{broker.port}")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    (b6_sha, b6_count), (b7_sha, _) = sent[b6.name], sent[b7.name]
    assert f"cleared {b6.name} ({b6_sha[:12]}): {b6_count} chunks" in clean.stdout
    assert f"kept {b7.name} ({b7_sha[:12]}): a rollout is sending it" in clean.stdout
    b6_topics = [f"katago/fleet/models/{b6_sha}/manifest"] + [
        f"katago/fleet/models/{b6_sha}/chunk/{i}" for i in (0, b6_count - 1)
    ]
    assert read_retained(broker.port, b6_topics) == {}
    left = read_retained(broker.port, [f"katago/fleet/models/{b7_sha}/manifest"])
    assert json.loads(left[f"katago/fleet/models/{b7_sha}/manifest"].payload)["sha256"] == b7_sha
