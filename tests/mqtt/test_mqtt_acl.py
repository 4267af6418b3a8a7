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

from agent.cli import run
from agent.transports.mqtt import MqttSettings, MqttTransport
from agent.transports.mqtt_client import MqttRequester

# Keep in sync with docs/mqtt.md ("Mosquitto ACL").
ACL = """\
# Devices log in with their device id as user name; %u is that name, %c the client id.
pattern write katago/%u/status
pattern write katago/%u/health
pattern read katago/%u/analysis/request
pattern read katago/fleet/analysis/request
pattern write katago/clients/+/reply
# Every client may read its own reply topic (requesters use katago/clients/<client id>/reply).
pattern read katago/clients/%c/reply

user kat-host
topic write katago/+/analysis/request
topic write katago/fleet/analysis/request

user fleet-monitor
topic read katago/+/status
topic read katago/+/health
"""
USERS = {"dev-a": "pa", "dev-b": "pb", "kat-host": "ph", "fleet-monitor": "pm"}


@pytest.fixture
def acl_broker(tmp_path: Path):
    if MOSQUITTO is None:
        pytest.skip(NEEDS_MOSQUITTO)
    for user, pw in USERS.items():
        add_password(tmp_path, user, pw)
    (tmp_path / "acl").write_text(ACL)
    b = Mosquitto(
        tmp_path,
        extra_conf=f"allow_anonymous false\npassword_file {tmp_path / 'passwords'}\nacl_file {tmp_path / 'acl'}\n",
    )
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

        # dev-b may not overwrite dev-a's status: the broker refuses the publish.
        spoof = MqttRequester(login(acl_broker, "dev-b", monkeypatch), client_id="spoofer")
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
    assert "Denied PUBLISH from spoofer" in acl_broker.read_log()


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
