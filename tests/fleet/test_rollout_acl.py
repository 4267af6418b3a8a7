"""Who may deploy: the fleet broker setup of docs/mqtt.md (read from the file, as
tests/transports/mqtt/test_mqtt_acl.py does), enforced by a real Mosquitto. Only the operator's
credentials publish desired states; a device's cannot, neither to another device nor to itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fleet_support import (
    MOSQUITTO,
    NEEDS_MOSQUITTO,
    Mosquitto,
    base_env,
    cli,
    publish_raw,
    run_store,
    wait_until,
)
from mqtt_support import StubService, add_password

from agent.transports.mqtt.settings import MqttSettings
from agent.transports.mqtt.transport import MqttTransport

pytestmark = pytest.mark.needs_mosquitto

DOCS = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"
USERS = {
    "dev-a": "pa",
    "dev-b": "pb",
    "dev-c": "pc",
    "kat-host": "ph",
    "fleet-monitor": "pm",
    "fleet-operator": "po",
}
SHA = "ab" * 32


def documented_block(first_line: str) -> str:
    for block in DOCS.read_text().split("```text\n")[1:]:
        body = block.split("```", 1)[0]
        if body.startswith(first_line):
            return body
    raise AssertionError(f"docs/mqtt.md has no block starting with {first_line!r}")


@pytest.fixture
def fleet_broker(short_tmp: Path):
    if MOSQUITTO is None:
        pytest.skip(NEEDS_MOSQUITTO)
    work = short_tmp / "acl-broker"
    work.mkdir()
    for user, password in USERS.items():
        add_password(work, user, password)
    (work / "acl").write_text(documented_block("# /etc/mosquitto/katago-edge.acl"))
    conf = []
    for line in documented_block("# /etc/mosquitto/conf.d/katago-edge-fleet.conf").splitlines():
        key = line.split(" ", 1)[0]
        if key == "password_file":
            line = f"password_file {work / 'passwords'}"
        elif key == "acl_file":
            line = f"acl_file {work / 'acl'}"
        elif key in ("listener", "persistence", "max_queued_messages", "set_tcp_nodelay"):
            continue  # Mosquitto() sets them
        conf.append(line)
    broker = Mosquitto(work, extra_conf="\n".join(conf) + "\n")
    broker.start()
    yield broker
    broker.stop()


def device(broker: Mosquitto, user: str, got: list[bytes], monkeypatch: pytest.MonkeyPatch) -> MqttTransport:
    monkeypatch.setenv(f"PW_{user.replace('-', '_').upper()}", USERS[user])
    settings = MqttSettings(
        host="127.0.0.1", port=broker.port, username=user, password_env=f"PW_{user.replace('-', '_').upper()}"
    )
    agent = MqttTransport(settings, user, StubService().handle_query, on_desired=got.append)
    agent.start()
    assert agent.wait_connected(10)
    return agent


def deploy_as(broker: Mosquitto, user: str, target: str) -> tuple[int, str]:
    result = cli(
        "fleet", "deploy", "https://models.example/net.bin.gz", "--sha256", SHA, "--device", target,
        "--broker", f"127.0.0.1:{broker.port}", "--username", user, "--password-env", "PW", "--timeout", "1",
        env=base_env(PW=USERS[user], **run_store()),
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


def test_rollout_acl__only_operator_credentials_publish_desired_state(
    fleet_broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    got_a: list[bytes] = []
    dev_a = device(fleet_broker, "dev-a", got_a, monkeypatch)
    try:
        desired = json.dumps({"id": "dep-x", "url": "https://m.example/n.bin.gz", "sha256": SHA}).encode()
        for user in ("dev-a", "dev-b", "kat-host", "fleet-monitor"):  # itself, another device, others
            login = {"username": user, "password": USERS[user]}
            assert publish_raw(fleet_broker.port, "katago/dev-a/deployment/desired", desired, **login) == 135
        for user in ("dev-b", "kat-host", "fleet-monitor"):  # (dev-a's login is in use by dev-a itself)
            code, out = deploy_as(fleet_broker, user, "dev-a")
            assert code == 1 and "Traceback" not in out, out
            assert "the broker refused the publish" in out and "only operator credentials" in out, out
        assert got_a == []  # nothing refused ever reached the device
        assert "Denied PUBLISH from dev-b" in fleet_broker.read_log()

        # the operator may: dev-c is offline and gets the retained desired state when it connects
        code, out = deploy_as(fleet_broker, "fleet-operator", "dev-c")
        assert code == 0 and "1 offline" in out, out
        got_c: list[bytes] = []
        dev_c = device(fleet_broker, "dev-c", got_c, monkeypatch)
        try:
            wait_until(lambda: got_c, 10, "dev-c received its desired state")
            received = json.loads(got_c[0])
            assert (received["sha256"], received["url"]) == (SHA, "https://models.example/net.bin.gz")
        finally:
            dev_c.stop()
        assert got_a == []
    finally:
        dev_a.stop()


def test_rollout_acl__only_the_operator_publishes_network_chunks__devices_read_them(
    fleet_broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fleet deploy --transfer mqtt``: chunks and manifest under ``katago/fleet/models/#`` are
    written by the operator alone; a device reads them (``MqttTransport.watch``, as the download does)."""
    base = f"katago/fleet/models/{SHA}"
    chunk = bytes(range(256)) * 4
    for user in ("dev-a", "dev-b", "kat-host", "fleet-monitor"):
        login = {"username": user, "password": USERS[user]}
        for topic in (f"{base}/chunk/0", f"{base}/manifest"):
            assert publish_raw(fleet_broker.port, topic, b"forged", **login) == 135, (user, topic)
    operator = {"username": "fleet-operator", "password": USERS["fleet-operator"]}
    assert publish_raw(fleet_broker.port, f"{base}/chunk/0", chunk, **operator) in (
        0,
        16,
    )  # 16: no subscriber
    got: list[bytes] = []
    dev_a = device(fleet_broker, "dev-a", [], monkeypatch)
    try:
        dev_a.watch(f"{base}/chunk/0", got.append)
        wait_until(lambda: got, 10, "dev-a received the retained chunk")
        assert got == [chunk]  # the operator's bytes, not a forged one
        dev_a.unwatch(f"{base}/chunk/0")
    finally:
        dev_a.stop()
    assert "Denied PUBLISH from dev-a" in fleet_broker.read_log()
