"""A daemon killed (SIGKILL) while it prepares (or downloads over MQTT) a deployed network comes back serving the old one,
then resumes the deployment from the retained desired state; a desired state without sha256 is
ignored. Real Mosquitto, real daemons, real networks; the operator is ``katago-edge fleet``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from edge_fixtures import model_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))
from fleet_support import Device, EventLog, Mosquitto, cli, publish_raw, wait_until

from agent.fleet.chunks import manifest_of
from agent.fleet.rollout import FleetClient
from agent.fsutil import file_lock, sha256_file
from agent.models.manifest import read_manifest
from agent.models.store import BUILD_LOCK
from agent.transports.mqtt.settings import MqttSettings

pytestmark = [pytest.mark.needs_models, pytest.mark.needs_mosquitto, pytest.mark.slow]

NUMPY_ONLY = 'overrides = {runtimes = [{runtime = "numpy", precision = "fp32"}]}\n'


def test_deployment__sigkill_while_preparing__back_on_the_old_network__resumed__no_sha256_ignored(
    models_dir: Path, short_tmp: Path, broker: Mosquitto
) -> None:
    b6, b7 = model_file(models_dir, "b6c96"), model_file(models_dir, "b7c96-cnorm").resolve()
    # the device serves b6c96 with numpy; the deployment asks for ONNX, converted in a store of its
    # own whose build lock the test holds (as another process's conversion would): preparing waits
    # there, so the kill lands in the middle of it on any machine
    device = Device(short_tmp, "k1", broker, b6, config=NUMPY_ONLY)
    store = short_tmp / "store"
    events = EventLog(broker.port)
    try:
        device.start(KATAGO_EDGE_ARTIFACT_STORE=str(store)).wait_ready()
        old_name = device.model_name()
        assert device.health_answer()["network"]["serving"]["runtime"] == "numpy"

        # no sha256: refused by the daemon, which keeps serving
        plain = {"id": "dep-nosha", "url": f"file://{b7}", "network": b7.name}
        assert publish_raw(broker.port, "katago/k1/deployment/desired", json.dumps(plain).encode()) == 0
        wait_until(lambda: device.deployment().get("refused") == 1, 30, "the message refused")
        assert "ignoring a desired-state message: deployment dep-nosha: no sha256" in device.log()
        assert events.of("k1") == [] and device.model_name() == old_name

        with file_lock(store / BUILD_LOCK):
            deploy = cli(
                "fleet", "deploy", f"file://{b7}", "--sha256", sha256_file(b7), "--device", "k1",
                "--runtime", "onnx", "--precision", "fp32", "--id", "dep-kill", "--timeout", "2",
                "--broker", f"127.0.0.1:{broker.port}",
            )  # fmt: skip
            assert "deployment dep-kill" in deploy.stdout, deploy.stderr
            wait_until(lambda: "preparing" in events.states("k1", "dep-kill"), 120, "preparing")
            wait_until(lambda: "waiting for another process's build" in device.log(), 60, "waiting")
            device.kill()
        saved = json.loads((device.dir / "state" / "deployment.json").read_text())
        assert saved["deployment"]["state"] == "preparing", saved  # killed in the middle
        assert saved["current"]["network"] == b6.name
        assert not list(store.glob("onnx/*.onnx")), "nothing built while the lock was held"

        started = time.monotonic()
        device.start(KATAGO_EDGE_ARTIFACT_STORE=str(store)).wait_ready()
        first = device.health_answer()  # right after the restart: the old network serves
        assert first["network"]["serving"]["runtime"] == "numpy"
        assert first["deployment"]["current"]["network"] == b6.name
        assert "dep-kill was interrupted while preparing" in device.log()

        wait_until(lambda: device.deployment().get("state") == "active", 300, "resumed and active")
        print(f"resumed to active {time.monotonic() - started:.1f} s after the restart")
        health = device.health_answer()
        serving = health["network"]["serving"]
        assert (serving["runtime"], health["deployment"]["current"]["network"]) == ("onnx", b7.name)
        manifest = read_manifest(Path(serving["file"]))  # a whole, verified artifact: nothing half-written
        assert manifest is not None and manifest.sha256 == sha256_file(Path(serving["file"]))
        assert device.model_name() != old_name
        assert device.analyse()["rootInfo"]["visits"] >= 4
        assert events.states("k1", "dep-kill")[-2:] == ["preparing", "active"]

        # once per deployment id: a clean restart gets the retained message again and ignores it,
        # starting directly on the deployed network
        before = len(events.of("k1"))
        assert device.stop() == 0
        device.start(KATAGO_EDGE_ARTIFACT_STORE=str(store)).wait_ready()
        time.sleep(2.0)
        assert len(events.of("k1")) == before
        assert device.deployment()["state"] == "active" and device.model_name() != old_name
        assert device.health_answer()["network"]["serving"]["runtime"] == "onnx"
    finally:
        events.close()
        device.stop()
        print(device.log()[-3000:])  # shown when the test fails


def test_deployment__sigkill_while_downloading_over_mqtt__resumes_with_the_chunks_it_kept(
    models_dir: Path, short_tmp: Path, broker: Mosquitto
) -> None:
    """A device loses power in the middle of an MQTT transfer: only the first half of the chunks
    is on the broker, so the device stalls after writing them (deterministically) and is killed
    there. Restarted, with the rest of the chunks sent meanwhile, it resumes the deployment from the
    retained desired state, keeps exactly the chunks it wrote, and ends serving the new network."""
    b6, b7 = model_file(models_dir, "b6c96").resolve(), model_file(models_dir, "b7c96-cnorm").resolve()
    sha, size, chunk_size = sha256_file(b7), b7.stat().st_size, 64 << 10
    manifest = manifest_of(b7, sha, b7.name, chunk_size)
    count, half = manifest["count"], manifest["count"] // 2
    device = Device(short_tmp, "m1", broker, b6, config=NUMPY_ONLY)
    events = EventLog(broker.port)
    operator = FleetClient(MqttSettings(host="127.0.0.1", port=broker.port))
    data = b7.read_bytes()
    try:
        device.start().wait_ready()
        old_name = device.model_name()
        operator.connect()
        for index in range(half):  # the first half only: the transfer stops there
            operator.publish(
                operator.topics.model_chunk(sha, index), data[index * chunk_size : (index + 1) * chunk_size]
            )
        operator.publish(operator.topics.model_manifest(sha), manifest)
        desired = {
            "id": "dep-dl",
            "network": b7.name,
            "sha256": sha,
            "size": size,
            "url": f"mqtt:{operator.topics.model(sha)}",
        }
        assert publish_raw(broker.port, "katago/m1/deployment/desired", json.dumps(desired).encode()) == 0
        # every chunk there is written: the device waits for the others, then asks again
        wait_until(lambda: "no chunk for" in device.log(), 60, "the transfer stalled")
        device.kill()
        saved = json.loads((device.dir / "state" / "deployment.json").read_text())
        assert (saved["deployment"]["id"], saved["deployment"]["state"]) == ("dep-dl", "downloading"), saved
        assert saved["current"]["network"] == b6.name
        assert not (device.dir / "state" / "models" / b7.name).exists()  # only the part file

        for index in range(half, count):  # the operator sends the rest while the device is down
            operator.publish(
                operator.topics.model_chunk(sha, index), data[index * chunk_size : (index + 1) * chunk_size]
            )
        device.start().wait_ready()
        assert device.model_name() == old_name  # the old network serves at once
        assert "dep-dl was interrupted while downloading" in device.log()
        wait_until(lambda: device.deployment().get("state") == "active", 120, "resumed and active")
        assert f"resuming {b7.name} with {half} of {count} chunks kept" in device.log()
        assert device.deployment()["current"]["sha256"] == sha
        assert sha256_file(device.dir / "state" / "models" / b7.name) == sha
        assert device.model_name() != old_name and "b7c96" in device.model_name()
        assert device.analyse()["rootInfo"]["visits"] >= 4
        assert events.states("m1", "dep-dl")[-4:] == ["downloading", "verifying", "preparing", "active"]
    finally:
        operator.close()
        events.close()
        device.stop()
        print(device.log()[-3000:])  # shown when the test fails
