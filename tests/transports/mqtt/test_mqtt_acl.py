"""The Mosquitto ACL documented in docs/mqtt.md, enforced by a real broker: each device may only
publish under its own topics; requesters and the fleet monitor get just what they need."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mqtt_support import (
    MOSQUITTO,
    NEEDS_MOSQUITTO,
    Mosquitto,
    StubService,
    add_password,
    read_retained,
    wait_for,
)

from agent.cli.main import run
from agent.transports.mqtt.client import MqttRequester
from agent.transports.mqtt.transport import MqttSettings, MqttTransport

DOCS = Path(__file__).resolve().parents[3] / "docs" / "mqtt.md"


def documented_block(first_line: str) -> str:
    """The ```text block of docs/mqtt.md that starts with ``first_line``."""
    for block in DOCS.read_text().split("```text\n")[1:]:
        body = block.split("```", 1)[0]
        if body.startswith(first_line):
            return body
    raise AssertionError(f"docs/mqtt.md has no block starting with {first_line!r}")


ACL = documented_block("# /etc/mosquitto/katago-edge.acl")
BROKER_CONF = documented_block("# /etc/mosquitto/conf.d/katago-edge-fleet.conf")
USERS = {
    "dev-a": "pa",
    "dev-b": "pb",
    "dev-c": "pc",
    "kat-host": "ph",
    "kat-guest": "pg",
    "fleet-monitor": "pm",
}


@pytest.fixture
def acl_broker(tmp_path: Path):
    if MOSQUITTO is None:
        pytest.skip(NEEDS_MOSQUITTO)
    for user, pw in USERS.items():
        add_password(tmp_path, user, pw)
    (tmp_path / "acl").write_text(ACL)
    conf = []  # the documented listener settings; the test's port, store and files
    for line in BROKER_CONF.splitlines():
        key = line.split(" ", 1)[0]
        if key == "password_file":
            line = f"password_file {tmp_path / 'passwords'}"
        elif key == "acl_file":
            line = f"acl_file {tmp_path / 'acl'}"
        elif key in ("listener", "persistence", "max_queued_messages", "set_tcp_nodelay"):
            continue  # Mosquitto() sets them (listener on a free 127.0.0.1 port)
        conf.append(line)
    b = Mosquitto(tmp_path, extra_conf="\n".join(conf) + "\n")
    b.start()
    yield b
    b.stop()


def login(b: Mosquitto, user: str, monkeypatch: pytest.MonkeyPatch) -> MqttSettings:
    env = "PW_" + user.replace("-", "_").upper()
    monkeypatch.setenv(env, USERS[user])
    return MqttSettings(host="127.0.0.1", port=b.port, username=user, password_env=env, health_interval_s=0.5)


def test_acl__documented_rules_let_each_role_do_its_job_and_nothing_more(acl_broker, monkeypatch, capsys):
    agents = []
    try:
        for dev in ("dev-a", "dev-b"):
            agent = MqttTransport(
                login(acl_broker, dev, monkeypatch), dev, StubService(label=dev).handle_query
            )
            agent.start()
            assert agent.wait_connected(10)
            agents.append(agent)
        req = MqttRequester(login(acl_broker, "kat-host", monkeypatch))
        req.connect(10)
        try:
            direct = req.request("katago/dev-a/analysis/request", {"id": "d", "moves": []}, timeout=10)
            assert direct[0]["rootInfo"]["server"] == "dev-a"
            fleet = req.request("katago/fleet/analysis/request", {"id": "f", "moves": []}, timeout=10)
            assert fleet[0]["id"] == "f"  # the shared subscription passes the ACL
        finally:
            req.close()

        # another device (dev-c) may not overwrite dev-a's status: the broker refuses the publish.
        spoof = MqttRequester(login(acl_broker, "dev-c", monkeypatch), client_id="spoofer")
        spoof.connect(10)
        try:
            info = spoof._client.publish(
                "katago/dev-a/status", json.dumps({"state": "offline"}), qos=1, retain=True
            )
            info.wait_for_publish(5)
        finally:
            spoof.close()

        monkeypatch.setenv("PW_FLEET_MONITOR", USERS["fleet-monitor"])
        argv = ["fleet", "--broker", f"127.0.0.1:{acl_broker.port}", "--json", "--once"]
        argv += ["--username", "fleet-monitor", "--password-env", "PW_FLEET_MONITOR"]
        capsys.readouterr()
        assert run(argv) == 0
        rows = {r["device"]: r for r in json.loads(capsys.readouterr().out)["devices"]}
        assert {d: r["state"] for d, r in rows.items()} == {"dev-a": "online", "dev-b": "online"}
        assert rows["dev-a"]["health"]["mqtt"]["connected"] is True
    finally:
        for agent in agents:
            agent.stop()
    assert "Denied PUBLISH from dev-c" in acl_broker.read_log()  # client id forced to the user name


def test_acl__anonymous_gets_nothing(acl_broker):
    assert read_retained(acl_broker.port, ["katago/+/status"], timeout=0.5) == {}


def test_acl__device_id_not_matching_user_name_says_check_the_acl(acl_broker, monkeypatch, caplog):
    agent = MqttTransport(login(acl_broker, "dev-b", monkeypatch), "dev-a", StubService().handle_query)
    agent.start()
    try:
        assert agent.wait_connected(10)
        wait_for(
            lambda: "broker refused our publish to katago/dev-a/status: Not authorized" in caplog.text, 5
        )
        assert wait_for(lambda: agent.stats()["publish_refused"] >= 2, 5)  # status and health
    finally:
        agent.stop()


def test_acl__client_ids_bound_to_user_names_nobody_hijacks_reads_or_forges(acl_broker, monkeypatch):
    import time

    from agent.transports.mqtt.transport import make_client

    agents = []
    got: list[tuple[str, bytes]] = []
    intruders = []

    def intruder(user: str, client_id: str, topics: list[str]):
        client = make_client(login(acl_broker, user, monkeypatch), client_id)
        client.on_message = lambda _c, _u, msg: got.append((msg.topic, bytes(msg.payload)))
        client.connect("127.0.0.1", acl_broker.port)
        if topics:
            client.subscribe([(t, 1) for t in topics])
        client.loop_start()
        intruders.append(client)
        return client

    try:
        for dev in ("dev-a", "dev-b"):
            agent = MqttTransport(
                login(acl_broker, dev, monkeypatch), dev, StubService(label=dev).handle_query
            )
            agent.start()
            assert agent.wait_connected(10)
            agents.append(agent)
        req = MqttRequester(login(acl_broker, "kat-host", monkeypatch), client_id="kat-host-session")
        req.connect(10)
        try:
            assert req.reply_topic == "katago/clients/kat-host/reply"
            # dev-a's credentials with dev-b's client id: forced to "dev-a", dev-b keeps its session
            intruder("dev-a", agents[1].client_id, [])
            # another user with the requester's client id, subscribing to its replies and the fleet
            watch = [
                req.reply_topic,
                "katago/fleet/analysis/request",
                "$share/x/katago/fleet/analysis/request",
            ]
            guest = intruder("kat-guest", "kat-host-session", watch)
            time.sleep(0.5)
            direct = req.send("katago/dev-b/analysis/request", {"id": "d", "moves": []})
            fleet = req.send("katago/fleet/analysis/request", {"id": "f", "moves": []})
            assert req.wait(direct, 10).devices == ["dev-b"]
            assert req.wait(fleet, 10).responses[-1]["id"] == "f"
            # a forged answer to the requester's reply topic is refused by the broker
            guest.publish(req.reply_topic, b'{"id": "d", "isDuringSearch": false}', qos=1).wait_for_publish(5)
            time.sleep(0.5)
            assert got == [] and req.unmatched == 0
            assert agents[1].stats()["disconnects"] == 0 and agents[1].connected
        finally:
            req.close()
    finally:
        for client in intruders:
            client.disconnect()
            client.loop_stop()
        for agent in agents:
            agent.stop()
    log = acl_broker.read_log()
    assert "Denied PUBLISH from kat-guest" in log
