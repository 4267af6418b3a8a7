"""install.sh with its own local Mosquitto (no --broker) sets up the fleet ACL of docs/mqtt.md for
the device: the agent logs in with the device's credentials, only the ``fleet-operator`` login may
publish a desired network (a device's or an anonymous client's publish is refused by the broker),
and the operator's ``katago-edge fleet deploy`` reaches the installed agent, which swaps networks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_support import MOSQUITTO, NEEDS_MOSQUITTO, REPO, base_env, free_port
from edge_fixtures import model_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))
from fleet_support import ask, cli, publish_raw, run_store

from agent.fsutil import sha256_file

pytestmark = [pytest.mark.needs_mosquitto, pytest.mark.needs_models, pytest.mark.slow]


def _install(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "install.sh"), *args], capture_output=True, text=True, timeout=600, env=env
    )


def test_install__local_broker_gets_the_fleet_acl__only_the_operator_deploys(
    short_tmp: Path, models_dir: Path
) -> None:
    if MOSQUITTO is None:
        pytest.skip(NEEDS_MOSQUITTO)
    short_tmp.chmod(0o755)  # mosquitto drops to its own user and reads the logins under the prefix
    prefix = short_tmp / "opt"
    port = free_port()
    env = base_env(
        KATAGO_EDGE_INSTALL_BROKER_PORT=str(port),
        KATAGO_EDGE_INSTALL_WS_PORT=str(free_port()),
        KATAGO_EDGE_INSTALL_WAIT="180",
    )
    venv = str(Path(sys.executable).parent.parent)
    args = ["--prefix", str(prefix), "--no-systemd", "--model", "fake", "--device-id", "acl-dev"]
    args += ["--venv", venv, "--yes"]
    etc = prefix / "etc/katago-edge"
    try:
        first = _install(*args, env=env)
        out = first.stdout + first.stderr
        assert first.returncode == 0, out
        assert "online: acl-dev" in out and "only fleet-operator may deploy" in out, out
        assert f"local Mosquitto on 127.0.0.1:{port}" in out
        assert oct((etc / "operator-password").stat().st_mode & 0o777) == "0o600"
        config = (etc / "agent.toml").read_text()
        assert 'username = "acl-dev"' in config and f'password_file = "{etc}/mqtt-password"' in config
        again = _install(*args, env=env)  # idempotent: logins and ACL are not rewritten
        assert again.returncode == 0 and "nothing changed" in again.stdout, again.stdout + again.stderr

        desired = json.dumps(
            {"id": "dep-acl", "url": "https://m.example/n.bin.gz", "sha256": "cd" * 32}
        ).encode()
        topic = "katago/acl-dev/deployment/desired"
        device_login = {"username": "acl-dev", "password": (etc / "mqtt-password").read_text().strip()}
        assert publish_raw(port, topic, desired) == 135  # anonymous local client
        assert publish_raw(port, topic, desired, **device_login) == 135  # the device itself
        assert publish_raw(port, "katago/other/deployment/desired", desired, **device_login) == 135

        # the operator deploys (the file:// URL: a network on this machine) and the agent swaps
        b6 = model_file(models_dir, "b6c96").resolve()
        deploy = cli(
            "fleet", "deploy", f"file://{b6}", "--sha256", sha256_file(b6), "--device", "acl-dev",
            "--runtime", "numpy", "--id", "dep-op", "--timeout", "240", "--broker", f"127.0.0.1:{port}", "--watch",
            "--username", "fleet-operator", "--password-file", str(etc / "operator-password"),
            env=base_env(**run_store()),
        )  # fmt: skip
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        assert "1 active, 0 failed" in deploy.stdout
        assert "│ acl-dev │ active │ 100%" in deploy.stdout  # the --watch table
        sock = prefix / "run/katago-edge/agent.sock"
        models = ask(sock, {"id": "m", "action": "query_models"})["models"]
        assert models[0]["name"] != "fake"
        health = ask(sock, {"id": "h", "action": "query_health"})["health"]
        assert health["deployment"]["current"]["network"] == b6.name
    finally:
        done = _install("--uninstall", *args, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    # --uninstall waits for the broker to exit before it removes its folders: nothing is left,
    # nothing listens, at once
    assert not prefix.exists() or not any(prefix.rglob("*")), sorted(prefix.rglob("*"))
    assert publish_refused_or_closed(port), "the local broker still listens after --uninstall"


def publish_refused_or_closed(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True
