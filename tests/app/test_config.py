"""AgentConfig: TOML with positions for unknown keys, environment and flag overrides."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from agent.app.config import (
    AgentConfig,
    env_overrides,
    key_line,
    load_config,
    parse_config,
    render_toml,
    split_host_port,
)
from agent.app.daemon import configure_serve, flag_overrides
from agent.errors import ConfigError

GOOD = """\
device_id = "pi-kitchen"   # topic level
model = "/var/lib/katago-edge/models/b6c96.bin.gz"

[socket]
path = "/run/katago-edge/agent.sock"

[websocket]
port = 7000

[mqtt]
host = "broker.lan"
port = 8883
health_interval_s = 15
"""


def test_config__valid_file_loads_with_values() -> None:
    config = parse_config(GOOD, "agent.toml", env={})
    assert config.device_id == "pi-kitchen"
    assert config.socket.path == Path("/run/katago-edge/agent.sock")
    assert (config.websocket.host, config.websocket.port) == ("127.0.0.1", 7000)
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.health_interval_s) == ("broker.lan", 8883, 15.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('device_id = "a"\nmodle = "x"\n', "agent.toml:2: modle: unknown key"),
        ('[mqtt]\nhost = "h"\n\n[mqtt.tlsopts]\nca = 1\n', "agent.toml:4: mqtt.tlsopts: unknown key"),
        ('[websocket]\nhots = "h"\n', "agent.toml:2: websocket.hots: unknown key"),
        ("socket.paht = 'x'\n", "agent.toml:1: socket.paht: unknown key"),
        ('[mqtt]\n# port\nport = "many"\n', "agent.toml:3: mqtt.port: Input should be a valid integer"),
        ('device_id = "has space"\n', "agent.toml:1: device_id: Value error, use letters"),
        ("stop_timeout = -1\n", "agent.toml:1: stop_timeout: Input should be greater than 0"),
    ],
)
def test_config__errors_name_the_line_and_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "agent.toml", env={})
    assert expected in str(info.value)


def test_config__invalid_toml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"agent.toml: not valid TOML: .*line 1"):
        parse_config("device_id = \n", "agent.toml", env={})


def test_config__key_line_follows_tables_and_dotted_keys() -> None:
    text = '[a]\nx = 1\n[a.b]\n"quoted key" = 2\n[c]\nd.e = 3\n'
    assert key_line(text, ["a", "x"]) == 2
    assert key_line(text, ["a", "b", "quoted key"]) == 4
    assert key_line(text, ["c", "d", "e"]) == 6
    assert key_line(text, ["a", "missing"]) == 1  # the nearest written parent
    assert key_line(text, ["nowhere"]) is None


def test_config__env_overrides_file_and_flags_override_env() -> None:
    env = {"KATAGO_EDGE_DEVICE_ID": "from-env", "KATAGO_EDGE_MQTT__PORT": "1884", "KATAGO_EDGE_MODELS": "/x"}
    config = parse_config(GOOD, "agent.toml", env=env)
    assert (config.device_id, config.mqtt.port, config.mqtt.host) == ("from-env", 1884, "broker.lan")
    config = parse_config(GOOD, "agent.toml", env=env, overrides={"device_id": "from-flag"})
    assert config.device_id == "from-flag"


def test_config__bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"environment KATAGO_EDGE_WEBSOCKET__PORT: websocket\.port"):
        parse_config(None, env={"KATAGO_EDGE_WEBSOCKET__PORT": "99999"})


def test_config__systemd_directories_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/katago-edge")
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/katago-edge")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/katago-edge")
    config = parse_config(None, env={})
    assert config.model_store_dir == Path("/var/lib/katago-edge/models")
    assert config.artifact_store_dir == Path("/var/cache/katago-edge/models")
    assert config.socket.path == Path("/run/katago-edge/agent.sock")


def test_config__rendered_toml_loads_back_equal() -> None:
    config = parse_config(GOOD, env={})
    assert parse_config(render_toml(config), env={}) == config


def test_config__missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config .*nope\.toml"):
        load_config(tmp_path / "nope.toml", env={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("h", ("h", 1883)), ("h:1", ("h", 1)), ("10.0.0.2:8883", ("10.0.0.2", 8883)), ("[::1]:99", ("::1", 99))],
)
def test_config__split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text, 1883) == expected


@pytest.mark.parametrize("bad", ["", "h:x", "h:70000", "a:b:c"])
def test_config__split_host_port_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(bad, 1883)


def _flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_serve(parser)
    return parser.parse_args(list(argv))


def test_serve_flags__become_overrides() -> None:
    args = _flags(
        "--model",
        "fake",
        "--broker",
        "10.1.1.1:1884",
        "--device-id",
        "d1",
        "--socket",
        "none",
        "--websocket",
        "0.0.0.0:7001",
        "--profile",
        "raspberry-pi-4",
    )
    config = parse_config(None, env={}, overrides=flag_overrides(args))
    assert config.model == "fake" and config.device_id == "d1" and config.profile == "raspberry-pi-4"
    assert (config.mqtt.enabled, config.mqtt.host, config.mqtt.port) == (True, "10.1.1.1", 1884)
    assert config.socket.enabled is False
    assert (config.websocket.host, config.websocket.port) == ("0.0.0.0", 7001)
    assert (
        parse_config(None, env={}, overrides=flag_overrides(_flags("--broker", "none"))).mqtt.enabled is False
    )


def test_serve_flags__bad_broker_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--broker"):
        flag_overrides(_flags("--broker", "host:port:x"))


def test_config__defaults_need_no_file() -> None:
    assert AgentConfig().socket.enabled and AgentConfig().websocket.port == 6470


def test_config__tool_variables_never_collide_with_config_keys() -> None:
    """Every ``KATAGO_EDGE_*`` variable the agent or its tests read for themselves (paths, the
    test switches) is ignored by the config loader or means the same there: one that named a
    config table (as ``KATAGO_EDGE_KATAGO`` did, the ``[katago]`` table) made every load fail."""
    root = Path(__file__).resolve().parents[2]
    pattern = re.compile(r"environ(?:\.get)?\(?\[?\"(KATAGO_EDGE_[A-Z0-9_]+)\"")
    names = {
        m.group(1)
        for folder in ("agent", "tests")
        for path in (root / folder).rglob("*.py")
        for m in pattern.finditer(path.read_text())
    }
    assert {"KATAGO_EDGE_MODELS", "KATAGO_EDGE_KATAGO_BINARY", "KATAGO_EDGE_ARTIFACT_STORE"} <= names
    env = dict.fromkeys(names, "/somewhere")
    # the one that is also a config key means the same there (the model store's folder)
    assert env_overrides(env) == {"artifact_store": "/somewhere"}
    assert parse_config("", env=env).artifact_store_dir == Path("/somewhere")
