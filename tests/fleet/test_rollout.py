"""Fleet rollouts end to end: real Mosquitto, real daemons (``katago-edge serve``) serving b6c96,
``katago-edge fleet serve-model`` as the local http server, and ``katago-edge fleet deploy |
deployments | rollback`` as the operator runs them."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from edge_fixtures import model_file
from fleet_support import QUERY, Device, EventLog, Mosquitto, cli, spawn_cli, wait_until

from agent.errors import TransportError
from agent.fsutil import sha256_file
from agent.transports.mqtt.client import MqttRequester
from agent.transports.mqtt.settings import MqttSettings

pytestmark = [pytest.mark.needs_models, pytest.mark.needs_mosquitto, pytest.mark.slow]


def serve_model(file: Path, log: Path) -> tuple[Any, str, str]:
    """``katago-edge fleet serve-model FILE`` on a free loopback port: (process, url, sha256)."""
    proc = spawn_cli("fleet", "serve-model", str(file), "--listen", "127.0.0.1:0", log=log)
    text = wait_until(lambda: "sha256 " in log.read_text() and log.read_text(), 30, "serve-model started")
    url = re.search(r"serving \S+: (\S+)", text)
    sha = re.search(r"sha256 ([0-9a-f]{64})", text)
    assert url and sha, text
    return proc, url.group(1), sha.group(1)


class QueryLoad:
    """Analysis requests over MQTT to some devices, one after another per device, until stopped:
    they run while the devices swap networks. Every request must end with exactly one final."""

    def __init__(self, port: int, devices: list[str]) -> None:
        self.requester = MqttRequester(MqttSettings(host="127.0.0.1", port=port))
        self.requester.connect(10)
        self.devices = devices
        self.stop = threading.Event()
        self.sent: list[bytes] = []
        self.threads = [threading.Thread(target=self._run, args=(d,), daemon=True) for d in devices]

    def start(self) -> QueryLoad:
        for t in self.threads:
            t.start()
        return self

    def _run(self, device: str) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            query = {**QUERY, "id": f"{device}-{n}", "maxVisits": 12, "reportDuringSearchEvery": 0.05}
            corr = self.requester.send(f"katago/{device}/analysis/request", query, expiry_s=300)
            self.sent.append(corr)
            try:
                self.requester.wait(corr, 120)
            except TransportError:  # unanswered: the test's assertion shows it
                return

    def finish(self) -> list[list[dict[str, Any]]]:
        self.stop.set()
        for t in self.threads:
            t.join(150)
        wait_until(lambda: True, 1, "late duplicates")  # a second final would arrive by now
        out = [self.requester.pending(c).responses for c in self.sent]
        self.requester.close()
        return out


def broker_args(broker: Mosquitto) -> list[str]:
    return ["--broker", f"127.0.0.1:{broker.port}"]


def test_rollout__canary_then_the_rest__queries_across_the_swap__late_device__deployments__rollback(
    models_dir: Path, short_tmp: Path, broker: Mosquitto
) -> None:
    b6, b7 = model_file(models_dir, "b6c96"), model_file(models_dir, "b7c96-cnorm")
    server, url, sha = serve_model(b7, short_tmp / "serve-model.log")
    devices = {d: Device(short_tmp, d, broker, b6) for d in ("d1", "d2", "d3")}
    events = EventLog(broker.port)
    try:
        for d in ("d1", "d2"):  # one after the other: the second start loads the first's conversion
            devices[d].start().wait_ready()
        old_name = devices["d1"].model_name()
        load = QueryLoad(broker.port, ["d1", "d2"]).start()
        wait_until(lambda: len(load.sent) >= 4, 60, "queries running")
        deploy = cli(
            "fleet", "deploy", url, "--sha256", sha, "--device", "d1", "d2", "d3", "--canary", "1",
            "--id", "dep-b7", "--timeout", "400", *broker_args(broker),
        )  # fmt: skip
        answers = load.finish()
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        print(deploy.stdout)
        assert "canary: d1" in deploy.stdout
        assert "2 active, 0 failed, 1 offline" in deploy.stdout  # d3 was not started yet

        # the canary went through every step before d2 got anything
        assert events.states("d1", "dep-b7") == ["pending", "downloading", "verifying", "preparing", "active"]
        assert events.states("d2", "dep-b7")[-1] == "active"
        d1_active = max(e["ts"] for e in events.of("d1", "dep-b7") if e["state"] == "active")
        assert min(e["ts"] for e in events.of("d2", "dep-b7")) > d1_active

        # every query sent across the swap: exactly one final, no error
        print(f"{len(answers)} queries sent across the swap")
        assert len(answers) >= 6
        for responses in answers:
            finals = [r for r in responses if r.get("isDuringSearch") is False]
            assert len(finals) == 1 and not any("error" in r for r in responses), responses

        new_name = devices["d1"].model_name()
        assert new_name != old_name and devices["d2"].model_name() == new_name
        for d in ("d1", "d2"):
            health = devices[d].health_answer()
            assert health["deployment"]["state"] == "active"
            assert health["deployment"]["current"] == {
                "network": b7.name,
                "sha256": sha,
                "deployment": "dep-b7",
            }
            assert health["deployment"]["previous"]["network"] == b6.name
            assert health["network"]["serving"]["runtime"] == "onnx"
            assert devices[d].analyse()["rootInfo"]["visits"] >= 4

        # a device started only after the deploy picks the retained desired state up
        devices["d3"].start().wait_ready()
        wait_until(lambda: devices["d3"].deployment().get("state") == "active", 300, "d3 active")
        assert devices["d3"].model_name() == new_name

        listing = cli("fleet", "deployments", "--json", *broker_args(broker))
        assert listing.returncode == 0, listing.stderr
        (record,) = json.loads(listing.stdout)["deployments"]
        assert record["id"] == "dep-b7" and record["state"] == "done" and record["canary"] == ["d1"]
        assert {d: s["state"] for d, s in record["devices"].items()} == dict.fromkeys(
            ("d1", "d2", "d3"), "active"
        )

        table = cli("fleet", "--json", "--once", *broker_args(broker))
        rows = {r["device"]: r for r in json.loads(table.stdout)["devices"]}
        assert rows["d1"]["network"] == b7.name and rows["d1"]["network_sha256"] == sha
        assert rows["d1"]["deployment"] == "dep-b7 active"
        assert (rows["d1"]["serving"], rows["d1"]["verify"]) == ("onnx/fp32", "passed")
        human = cli("fleet", "--once", *broker_args(broker)).stdout
        assert f"{b7.name} {sha[:8]}" in human and "dep-b7 active" in human, human

        rollback = cli("fleet", "rollback", "dep-b7", *broker_args(broker), "--timeout", "300")
        assert rollback.returncode == 0, rollback.stdout + rollback.stderr
        print(rollback.stdout)
        assert "3 rolled back, 0 failed" in rollback.stdout
        for d in ("d1", "d2", "d3"):
            assert devices[d].model_name() == old_name
            dep = devices[d].deployment()
            assert dep["state"] == "rolled_back" and dep["id"] == "dep-b7", dep
            assert dep["current"]["network"] == b6.name
        assert "downloading" not in events.states("d1", dep["rolled_back_by"])  # the kept copy served
    finally:
        events.close()
        for device in devices.values():
            device.stop()
        server.terminate()
        server.wait(10)


def test_rollout__corrupt_file_and_wrong_sha256_fail_on_the_canary__halt__others_never_get_it(
    models_dir: Path, short_tmp: Path, broker: Mosquitto
) -> None:
    b6, b7 = model_file(models_dir, "b6c96"), model_file(models_dir, "b7c96-cnorm")
    corrupt = short_tmp / "corrupt-b7c96.bin.gz"
    corrupt.write_bytes(b7.read_bytes()[: b7.stat().st_size // 2])  # a truncated network
    server, url, good_sha = serve_model(b7, short_tmp / "serve-model.log")
    devices = {d: Device(short_tmp, d, broker, b6) for d in ("c1", "c2")}
    events = EventLog(broker.port)
    try:
        for device in devices.values():
            device.start().wait_ready()
        old_name = devices["c1"].model_name()

        # a corrupt file (its sha256 is right: deploy serves the local file and hashes it itself)
        bad = cli(
            "fleet", "deploy", str(corrupt), "--listen", "127.0.0.1:0", "--device", "c1", "c2",
            "--canary", "1", "--id", "dep-corrupt", "--timeout", "300", *broker_args(broker),
        )  # fmt: skip
        print(bad.stdout)
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert "HALTED after 1 failure(s); no other device received it" in bad.stdout
        assert events.states("c1", "dep-corrupt") == [
            "pending",
            "downloading",
            "verifying",
            "preparing",
            "failed",
        ]
        failed = devices["c1"].deployment()
        assert failed["state"] == "failed" and failed["id"] == "dep-corrupt", failed
        assert failed["current"]["network"] == b6.name  # the old one serves

        # the right file announced with another sha256: refused before anything reads it
        wrong_sha = "0" * 64
        mismatch = cli(
            "fleet", "deploy", url, "--sha256", wrong_sha, "--device", "c1", "c2", "--canary", "1",
            "--id", "dep-mismatch", "--timeout", "300", *broker_args(broker),
        )  # fmt: skip
        print(mismatch.stdout)
        assert mismatch.returncode == 1
        assert events.states("c1", "dep-mismatch") == ["pending", "downloading", "verifying", "failed"]
        error = devices["c1"].deployment()["error"]
        assert error == f"sha256 mismatch: the file has {good_sha}, the deployment says {wrong_sha}"
        assert not list((devices["c1"].dir / "state" / "models").glob("*b7c96*"))  # deleted, never loaded

        assert events.of("c2") == []  # neither rollout reached c2
        for device in devices.values():
            assert device.model_name() == old_name
            assert device.analyse()["rootInfo"]["visits"] >= 4
        listing = json.loads(cli("fleet", "deployments", "--json", *broker_args(broker)).stdout)
        states = {r["id"]: (r["state"], r["devices"]["c2"]["state"]) for r in listing["deployments"]}
        assert states == {"dep-corrupt": ("halted", "unknown"), "dep-mismatch": ("halted", "unknown")}
        assert "c1: failed" in cli("fleet", "deployments", *broker_args(broker)).stdout
    finally:
        events.close()
        for device in devices.values():
            device.stop()
        server.terminate()
        server.wait(10)


def test_rollout__without_canary_k_failures_halt__rollback_to_an_earlier_deployment(
    models_dir: Path, short_tmp: Path, broker: Mosquitto
) -> None:
    """numpy-only devices (nothing to convert): a deployment of the network they already serve is
    active at once; a corrupt one without canary fails everywhere and halts; ``rollback --to``
    returns to the first deployment's network from the devices' kept copies."""
    b6, b7 = model_file(models_dir, "b6c96").resolve(), model_file(models_dir, "b7c96-cnorm").resolve()
    corrupt = short_tmp / "corrupt.bin.gz"
    corrupt.write_bytes(b7.read_bytes()[:100_000])
    numpy_only = 'overrides = {runtimes = [{runtime = "numpy", precision = "fp32"}]}\n'
    devices = {d: Device(short_tmp, d, broker, b6, config=numpy_only) for d in ("n1", "n2")}
    events = EventLog(broker.port)

    def deploy(source: Path, dep_id: str) -> Any:
        result = cli(
            "fleet", "deploy", f"file://{source}", "--sha256", sha256_file(source), "--all",
            "--id", dep_id, "--timeout", "300", *broker_args(broker),
        )  # fmt: skip
        print(result.stdout)
        return result

    try:
        for device in devices.values():
            device.start().wait_ready()
        old_name = devices["n1"].model_name()
        assert deploy(b6, "dep-base").returncode == 0
        assert events.states("n1", "dep-base") == ["pending", "active"]  # served already: no download
        assert deploy(b7, "dep-new").returncode == 0
        new_name = devices["n1"].model_name()
        assert new_name != old_name

        bad = deploy(corrupt, "dep-bad")
        # both got it at once (no canary); the first failure halts (the second may come just after)
        assert bad.returncode == 1
        assert re.search(r"HALTED after [12] failure\(s\); every target had started on it", bad.stdout)
        for d, device in devices.items():
            wait_until(lambda d=d: events.states(d, "dep-bad")[-1:] == ["failed"], 120, f"{d} failed")
            assert device.model_name() == new_name  # still the last good network

        back = cli("fleet", "rollback", "dep-new", "--to", "dep-base", *broker_args(broker))
        assert back.returncode == 0 and "2 rolled back, 0 failed" in back.stdout, back.stdout + back.stderr
        for d, device in devices.items():
            assert device.model_name() == old_name
            dep = device.deployment()
            assert (dep["id"], dep["state"], dep["current"]["network"]) == ("dep-new", "rolled_back", b6.name)
            assert "downloading" not in events.states(d, dep["rolled_back_by"])  # its kept copy
        listing = json.loads(cli("fleet", "deployments", "--json", *broker_args(broker)).stdout)
        assert {r["id"]: r["state"] for r in listing["deployments"]} == {
            "dep-base": "done",
            "dep-new": "rolled_back",
            "dep-bad": "halted",
        }
    finally:
        events.close()
        for device in devices.values():
            device.stop()
