"""install.sh: a real install under a prefix (no systemd) against a real mosquitto, dry runs on
device trees captured from a Pi and a Jetson, shellcheck, and the systemd unit's verify/security.

The install test reuses this test run's virtual environment (``--venv``, which already has
katago-edge installed editable from this checkout), so it downloads nothing; everything else
(config, network preparation and conversion, the background agent, the broker check) is the
real thing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_support import REPO, Mosquitto, base_env, free_port, socket_request
from edge_fixtures import model_file

from agent.transports.mqtt.client import MqttRequester
from agent.transports.mqtt.settings import MqttSettings

INSTALL = REPO / "install.sh"
FIXTURES = REPO / "tests" / "fixtures"
UNIT = REPO / "systemd" / "katago-edge.service"
QUERY = {
    "moves": [["B", "Q16"], ["W", "D4"]],
    "rules": "japanese",
    "komi": 6.5,
    "boardXSize": 19,
    "boardYSize": 19,
    "maxVisits": 8,
}


def _install(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=timeout, env=env or base_env()
    )


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.slow
def test_install__prefix_no_systemd__serves_mqtt_socket_websocket__idempotent__uninstall(
    short_tmp: Path, broker: Mosquitto, models_dir: Path
) -> None:
    model = model_file(models_dir, "b6c96")
    prefix = short_tmp / "opt"
    ws_port = free_port()
    env = base_env(KATAGO_EDGE_INSTALL_WS_PORT=str(ws_port), KATAGO_EDGE_INSTALL_WAIT="180")
    venv = str(Path(sys.executable).parent.parent)
    args = [
        "--prefix",
        str(prefix),
        "--no-systemd",
        "--broker",
        f"127.0.0.1:{broker.port}",
        "--model",
        str(model),
        "--device-id",
        "install-test",
        "--venv",
        venv,
        "--yes",
    ]
    pid = ""
    try:
        first = _install(*args, env=env)
        out = first.stdout + first.stderr
        assert first.returncode == 0, out
        assert "online: install-test" in out and "changed: config" in out
        # the command on PATH: <prefix>/bin/katago-edge -> the venv's (what --no-systemd --prefix links)
        link = prefix / "bin/katago-edge"
        assert os.readlink(link) == f"{venv}/bin/katago-edge"
        assert f"changed: command {link} -> {venv}/bin/katago-edge" in out
        assert f"MQTT:          {link} query --device install-test" in out  # not on PATH here: full path
        version = subprocess.run([str(link), "--version"], capture_output=True, text=True, timeout=60)
        assert version.returncode == 0 and version.stdout.startswith("katago-edge "), version.stderr
        log = (prefix / "var/log/katago-edge/agent.log").read_text()
        # prepared by install.sh, not converted again: the daemon takes the store's artifact
        assert "model store: using " in log and "model store: built" not in log, log
        pid = (prefix / "run/katago-edge/agent.pid").read_text().strip()

        # Unix socket
        answer = socket_request(prefix / "run/katago-edge/agent.sock", {"id": "sock", **QUERY}, 60)
        assert answer[-1]["isDuringSearch"] is False and answer[-1]["moveInfos"]

        # WebSocket, the way KaTrain sends: one JSON object per text frame, id QUERY:<n>
        async def ws_query() -> dict[str, object]:
            from websockets.asyncio.client import connect

            token = (prefix / "etc/katago-edge/websocket-token").read_text().strip()
            async with connect(f"ws://127.0.0.1:{ws_port}/?token={token}") as ws:
                await ws.send(json.dumps({"id": "QUERY:1", **QUERY}))
                while True:
                    response = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    if response.get("isDuringSearch") is False:
                        return response

        ws_final = asyncio.run(ws_query())
        assert ws_final["id"] == "QUERY:1" and ws_final["rootInfo"]

        # MQTT request/response through the broker
        requester = MqttRequester(MqttSettings.model_validate({"host": "127.0.0.1", "port": broker.port}))
        requester.connect(10)
        try:
            replies = requester.request("katago/install-test/analysis/request", {"id": "mqtt", **QUERY}, 60)
        finally:
            requester.close()
        assert replies[-1]["id"] == "mqtt" and replies[-1]["isDuringSearch"] is False

        # idempotent: a second run changes nothing and leaves the running agent alone
        second = _install(*args, env=env)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "nothing changed" in second.stdout and "changed:" not in second.stdout
        assert (prefix / "run/katago-edge/agent.pid").read_text().strip() == pid

        # an edited config is never overwritten
        config = prefix / "etc/katago-edge/agent.toml"
        config.write_text(config.read_text() + "\n# edited by hand\n")
        third = _install(*args, env=env)
        assert "keeping edited config" in third.stdout
        assert config.read_text().endswith("# edited by hand\n")
    finally:
        gone = _install("--uninstall", *args, env=env)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert _tree(prefix) == [] or "keeping edited config" in gone.stdout
    with pytest.raises(ProcessLookupError):  # the agent was stopped
        os.kill(int(pid), 0)
    purge = _install("--uninstall", "--purge", *args, env=env)
    assert purge.returncode == 0 and _tree(prefix) == [], purge.stdout


@pytest.mark.parametrize(
    ("device", "kind", "extras", "system_site", "dropin", "unit_dropin"),
    [
        ("raspberry-pi-4b-4gb", "raspberry-pi", "onnx,tflite", False, None, "raspberry-pi"),
        ("raspberry-pi-5-8gb", "raspberry-pi", "onnx,tflite", False, None, "raspberry-pi"),
        ("jetson-orin-nano-devkit", "jetson", "onnx", True, "L4T R36.4.3", "jetson"),
        ("jetson-nano", "jetson", "onnx", True, "KataGo binary", "jetson"),
        ("x86-64-nvidia-desktop", "x86_64-nvidia", "onnx", False, "NVIDIA GPU", "nvidia"),
        ("x86-64-avx2-laptop", "x86_64", "onnx,tflite", False, None, None),
    ],
)
def test_install__dry_run_on_device_trees_prints_extras_and_changes_nothing(
    short_tmp: Path,
    device: str,
    kind: str,
    extras: str,
    system_site: bool,
    dropin: str | None,
    unit_dropin: str | None,
) -> None:
    prefix = short_tmp / "opt"
    result = _install(
        "--dry-run", "--root", str(FIXTURES / device), "--prefix", str(prefix), "--model", "fake"
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(rf"device: +{re.escape(kind)} \(", out), out
    assert f"extras:    katago-edge[{extras}]" in out
    assert "packages:  python3-venv python3-pip ca-certificates mosquitto" in out
    assert ("--system-site-packages" in out) is system_site
    assert f"pip install --progress-bar on {REPO}[{extras}]" in out
    if dropin:
        assert dropin in out
    # a captured device runs systemd: the dry run shows the service steps for it
    assert "would run: useradd --system" in out
    assert "would write: /etc/systemd/system/katago-edge.service\n" in out
    assert ("would write: /etc/systemd/system/katago-edge.service.d/device.conf" in out) is (
        unit_dropin is not None
    )
    if unit_dropin:
        assert f"+ drop-in {unit_dropin}.conf" in out
    assert "would run: systemctl restart katago-edge.service" in out
    # the command goes on PATH as a symlink into the venv
    venv_cli = f"{prefix}/venv/bin/katago-edge"
    assert f"  command:   /usr/local/bin/katago-edge -> {venv_cli}\n" in out
    if not os.path.lexists("/usr/local/bin/katago-edge"):  # else a warning says it is left alone
        assert f"would run: ln -sfn {venv_cli} /usr/local/bin/katago-edge\n" in out
        assert f"would change: command /usr/local/bin/katago-edge -> {venv_cli}\n" in out
    # Debian's mosquitto service gets Nagle off (else ~40 ms per small MQTT reply)
    assert "would write: /etc/mosquitto/conf.d/katago-edge.conf" in out
    assert "would run: systemctl restart mosquitto.service" in out
    assert "dry run finished: nothing was changed" in out
    assert not prefix.exists()


def test_install__dry_run_links_the_command_into_prefix_bin_or_bin_dir(short_tmp: Path) -> None:
    """--no-systemd --prefix keeps everything under the prefix, the command in <prefix>/bin;
    --bin-dir puts it elsewhere; --uninstall (dry run) with nothing installed removes nothing."""
    prefix = short_tmp / "opt"
    base = [
        "--dry-run",
        "--no-systemd",
        "--prefix",
        str(prefix),
        "--model",
        "fake",
        "--broker",
        "127.0.0.1:1",
    ]
    out = _install(*base).stdout
    assert f"  command:   {prefix}/bin/katago-edge -> {prefix}/venv/bin/katago-edge\n" in out
    assert f"would run: mkdir -p {prefix}/bin\n" in out
    assert f"would run: ln -sfn {prefix}/venv/bin/katago-edge {prefix}/bin/katago-edge\n" in out
    out = _install(*base, "--bin-dir", str(short_tmp / "bin")).stdout
    assert f"would run: ln -sfn {prefix}/venv/bin/katago-edge {short_tmp}/bin/katago-edge\n" in out
    assert not prefix.exists() and not (short_tmp / "bin").exists()


def test_install__bin_dir_link_is_recorded_and_foreign_commands_are_left_alone(short_tmp: Path) -> None:
    """Real installs (fake network): the link goes where --bin-dir says and --uninstall finds it
    there without the option; someone else's katago-edge in a --bin-dir is left alone, with a
    warning, and is still there after --uninstall."""
    prefix, ours, other = short_tmp / "opt", short_tmp / "bin", short_tmp / "other-bin"
    other.mkdir()
    theirs = other / "katago-edge"
    theirs.write_text("#!/bin/sh\necho theirs\n")
    venv = str(Path(sys.executable).parent.parent)
    args = ["--prefix", str(prefix), "--no-systemd", "--model", "fake",
            "--broker", f"127.0.0.1:{free_port()}", "--venv", venv, "--yes"]  # fmt: skip
    env = base_env(KATAGO_EDGE_INSTALL_WS_PORT=str(free_port()), KATAGO_EDGE_INSTALL_WAIT="120")
    try:
        first = _install(*args, "--bin-dir", str(ours), env=env, timeout=300)
        assert first.returncode == 0, first.stdout + first.stderr
        assert os.readlink(ours / "katago-edge") == f"{venv}/bin/katago-edge"
        assert f"MQTT:          {ours}/katago-edge query" in first.stdout  # not on PATH: the full path
        second = _install(*args, "--bin-dir", str(other), env=env, timeout=300)
        assert second.returncode == 0, second.stdout + second.stderr
        assert (
            f"install.sh: warning: {theirs} exists and is not a symlink: left alone; the command is "
            f"{venv}/bin/katago-edge\n" in second.stderr
        )
        assert os.readlink(ours / "katago-edge") == f"{venv}/bin/katago-edge"  # still reachable
    finally:
        gone = _install("--uninstall", *args, env=env)  # no --bin-dir: the recorded link is found
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert f"changed: removed {ours}/katago-edge" in gone.stdout
    assert not os.path.lexists(ours / "katago-edge") and _tree(prefix) == []
    assert theirs.read_text() == "#!/bin/sh\necho theirs\n"


def test_install__help_and_docs_list_every_option() -> None:
    """Every option install.sh parses is in --help and in docs/daemon.md's option table."""
    script = INSTALL.read_text()
    parse = script[script.index("parse_args() {") : script.index("\n}\n", script.index("parse_args() {"))]
    options = sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", parse)))
    assert {"--bin-dir", "--model", "--prefix", "--uninstall", "--venv"} <= set(options)
    help_text = _install("--help").stdout
    docs = (REPO / "docs/daemon.md").read_text()
    table = docs[docs.index("| option | effect |") : docs.index("What it does, in order:")]
    for option in options:
        assert re.search(rf"^  {option}\b", help_text, re.M) or f", {option}" in help_text, option
        assert f"`{option}" in table, option


def test_install__dry_run_extras_cover_the_profile_the_agent_chooses() -> None:
    """install.sh decides extras in bash (before any Python package exists); the agent's own profile
    choice for the same device tree must find its preferred pip runtime among them."""
    from agent import profiles
    from agent.hardware import probe_hardware

    pip_runtime_extra = {"onnx": "onnx", "tflite": "tflite"}
    for device in ("raspberry-pi-4b-4gb", "jetson-orin-nano-devkit", "x86-64-avx2-laptop", "arm64-rock-5b"):
        out = _install("--dry-run", "--root", str(FIXTURES / device), "--model", "fake").stdout
        extras = re.search(r"katago-edge\[([a-z,]+)\]", out)
        assert extras, out
        profile, _ = profiles.select(probe_hardware(FIXTURES / device))
        wanted = [pip_runtime_extra[c.runtime] for c in profile.runtimes if c.runtime in pip_runtime_extra]
        assert wanted and wanted[0] in extras.group(1).split(","), (device, profile.name, extras.group(1))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown option --bogus"),
        (["--broker", "a b"], "--broker expects HOST:PORT"),
        (["--device-id", "x/y"], "--device-id may use"),
        (["--purge"], "--purge goes with --uninstall"),
        (["--prefix"], "--prefix needs a value"),
        (["--prefix", "--no-systemd"], "--prefix needs a value"),
    ],
)
def test_install__bad_options_fail_with_one_line(args: list[str], message: str) -> None:
    result = _install(*args)
    assert result.returncode == 1 and message in result.stderr


def test_install__shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("needs shellcheck (apt-get install -y shellcheck; Makefile DEB_TEST_PACKAGES)")
    result = subprocess.run([shellcheck, str(INSTALL)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("needs systemd-analyze (apt-get install -y systemd; Makefile DEB_TEST_PACKAGES)")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def test_unit__systemd_analyze_verify_clean() -> None:
    result = _analyze("verify", str(UNIT))
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("dropin", [None, "jetson", "raspberry-pi", "nvidia"])
def test_unit__security_exposure_at_most_3(tmp_path: Path, dropin: str | None) -> None:
    """The base unit and the unit with each device drop-in (later assignments win) stay <= 3.0."""
    unit = UNIT.read_text()
    if dropin:
        extra = (REPO / "systemd/drop-ins" / f"{dropin}.conf").read_text().split("[Service]", 1)[1]
        unit = unit.replace("\n[Install]", extra + "\n[Install]")
    path = tmp_path / "katago-edge.service"
    path.write_text(unit)
    assert _analyze("verify", str(path)).returncode == 0
    result = _analyze("security", "--offline=yes", str(path))
    match = re.search(r"Overall exposure level for katago-edge.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 3.0


def test_unit__directives_the_daemon_relies_on() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=60s",
        "Restart=on-failure",
        "StartLimitBurst=5",
        "TimeoutStopSec=30s",
        "User=katago-edge",
        "StateDirectory=katago-edge",
        "CacheDirectory=katago-edge",
        "ConfigurationDirectory=katago-edge",
        "RuntimeDirectory=katago-edge",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert f"\n{line}\n" in text, line
    # the daemon's default stop_timeout (20 s) must fit in TimeoutStopSec
    from agent.app.config import AgentConfig

    assert AgentConfig().stop_timeout < 30


def test_install__foreground_execs_the_agent_and_sigterm_exits_0(short_tmp: Path) -> None:
    """``--no-systemd --foreground`` (a container's entry point): install.sh becomes the agent."""
    prefix = short_tmp / "opt"
    env = base_env(KATAGO_EDGE_INSTALL_WS_PORT=str(free_port()))
    args = [
        "--prefix",
        str(prefix),
        "--no-systemd",
        "--foreground",
        "--broker",
        f"127.0.0.1:{free_port()}",
        "--model",
        "fake",
        "--venv",
        str(Path(sys.executable).parent.parent),
        "--yes",
    ]
    proc = subprocess.Popen(
        ["bash", str(INSTALL), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        sock = prefix / "run/katago-edge/agent.sock"
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        answer = socket_request(sock, {"id": "fg", **QUERY, "maxVisits": 2}, 30)
        assert answer[-1]["isDuringSearch"] is False
        proc.send_signal(signal.SIGTERM)  # the same pid: install.sh exec'd the agent
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out = ""
        if proc.stdout is not None:
            out = proc.stdout.read().decode()
            proc.stdout.close()
        _install("--uninstall", *[a for a in args if a != "--foreground"])
    assert "running in the foreground" in out
    assert _tree(prefix) == []


def test_install__offline_network_failure_says_where_to_put_a_network(short_tmp: Path) -> None:
    """An offline machine: the download fails, and both the agent and install.sh say what to do."""
    prefix = short_tmp / "opt"
    with socket.socket() as probe:  # nothing listens there: the download is refused, as offline
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/net.bin.gz"
    args = ["--prefix", str(prefix), "--no-systemd", "--broker", f"127.0.0.1:{free_port()}", "--model", url,
            "--venv", str(Path(sys.executable).parent.parent), "--yes"]  # fmt: skip
    try:
        result = _install(*args, env=base_env(KATAGO_EDGE_INSTALL_WS_PORT=str(free_port())), timeout=300)
    finally:
        gone = _install("--uninstall", *args)
    store = prefix / "var/lib/katago-edge/models"
    assert result.returncode == 1, result.stdout + result.stderr
    err = result.stderr
    # the agent's error names the file, the folder the installed agent reads and the local-file way
    assert f"katago-edge serve: error: downloading {url} failed: " in err
    assert f"put net.bin.gz into {store} (where the agent looks; " in err
    assert "or use a local .bin.gz file: `--model PATH`" in err
    # install.sh's own summary: where to copy a network and how to run it again
    assert "install.sh: error: preparing the network failed: see the agent's message above\n" in err
    assert f"the installed agent looks for networks:\n    {store}/\n" in err
    assert f"  then run install.sh again with --model {store}/NAME.bin.gz.\n" in err
    assert "`katago-edge fetch-model katrain`" in err
    assert not (prefix / "run/katago-edge/agent.pid").exists()  # nothing was started
    assert gone.returncode == 0 and _tree(prefix) == [], gone.stdout
