"""The agent config: one TOML file, validated by pydantic, with environment and flag overrides.

Precedence, lowest first: built-in defaults < the TOML file < ``KATAGO_EDGE_*`` environment
variables < command-line flags of ``katago-edge serve``. Every model rejects unknown keys
(``extra="forbid"``); ``tomllib`` reports no positions for a valid file, so :func:`key_line` finds
the line of an offending key in the text itself and the error reads
``agent.toml:7: mqtt.hots: unknown key``.

Environment variables name a key in upper case, nested tables joined by a double underscore::

    KATAGO_EDGE_DEVICE_ID=pi-kitchen        -> device_id
    KATAGO_EDGE_MQTT__HOST=broker.lan       -> mqtt.host
    KATAGO_EDGE_WEBSOCKET__PORT=6470        -> websocket.port

Under systemd the directories default to the ones the unit asks for (``StateDirectory=`` gives
``$STATE_DIRECTORY``, and likewise ``CACHE_DIRECTORY`` and ``RUNTIME_DIRECTORY``); run by hand
they fall back to the XDG folders of the user.

Settings owned by other modules are embedded as sub-tables: ``[mqtt]`` is
``agent.transports.mqtt.settings.MqttSettings`` and ``[katago]`` is
``agent.engines.katago_binary.KataGoSettings``. ``[overrides]`` is deep-merged into the chosen profile (``agent.profiles``).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.engines.katago_binary import KataGoSettings
from agent.errors import ConfigError
from agent.fsutil import default_cache_dir, default_state_dir
from agent.transports.mqtt.settings import MqttSettings

ENV_PREFIX = "KATAGO_EDGE_"
DEFAULT_CONFIG_PATHS = (Path("/etc/katago-edge/agent.toml"),)
DEFAULT_WEBSOCKET_PORT = 6470


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def default_socket_path() -> Path:
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / "agent.sock"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "katago-edge" / "agent.sock"
    return default_state_dir() / "agent.sock"


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT`` or ``[v6]:PORT`` to (host, port); raises ``ValueError``."""
    text = text.strip()
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", text)
    if not match or not text:
        raise ValueError(f"expected HOST or HOST:PORT, got {text!r}")
    host = match.group(1) or match.group(3)
    port_text = match.group(2) or match.group(4)
    port = int(port_text) if port_text else default_port
    if not 0 <= port < 65536:
        raise ValueError(f"port {port} out of range 0-65535")
    return host, port


class SocketSettings(_Strict):
    """Local Unix socket speaking the analysis protocol as JSON lines."""

    enabled: bool = True
    path: Path = Field(default_factory=default_socket_path)
    mode: int = Field(default=0o660, description="file mode of the socket (group = local users allowed)")


class WebSocketSettings(_Strict):
    """WebSocket endpoint for KaTrain's remote engine (``ws://HOST:PORT``). Off unless enabled:
    any local user can reach it, so ``install.sh`` turns it on with a ``token_file``."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_WEBSOCKET_PORT, ge=0, le=65535, description="0 = any free port")
    max_message_bytes: int = Field(default=1 << 20, ge=1024)
    token_file: Path | None = Field(
        default=None,
        description="clients must send this file's token (?token= or Bearer); not world-readable",
    )


class AgentConfig(_Strict):
    """Everything ``katago-edge serve`` needs; every field has a working default."""

    device_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=64)
    profile: str | None = Field(default=None, description="profile name; unset = chosen from the hardware")
    model: str | None = Field(default=None, description="network: path, URL or model-store name")
    engine: Literal["auto", "native", "katago"] = "auto"
    root: Path = Field(default=Path("/"), description="hardware probe root (a captured device tree in tests)")
    profiles_dir: Path | None = Field(
        default=None, description="profiles folder; unset = the shipped profiles"
    )
    state_dir: Path = Field(default_factory=default_state_dir)
    model_store: Path | None = Field(default=None, description="fetched networks; unset = <state_dir>/models")
    artifact_store: Path | None = Field(
        default=None,
        description="converted networks (the model store's artifacts); unset = <cache_dir>/models",
    )
    cache_dir: Path = Field(default_factory=default_cache_dir)
    stop_timeout: float = Field(default=20.0, gt=0, description="seconds to finish in-flight work on SIGTERM")
    overrides: dict[str, Any] = Field(default_factory=dict, description="profile fields to override")
    socket: SocketSettings = Field(default_factory=lambda: SocketSettings())
    websocket: WebSocketSettings = Field(default_factory=lambda: WebSocketSettings())
    mqtt: MqttSettings = Field(default_factory=lambda: MqttSettings.model_validate({}))
    katago: KataGoSettings = Field(default_factory=lambda: KataGoSettings.model_validate({}))

    @field_validator("device_id")
    @classmethod
    def _device_id_is_a_topic_level(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", value):
            raise ValueError("use letters, digits, '.', '_' and '-' only (it is an MQTT topic level)")
        return value

    @property
    def model_store_dir(self) -> Path:
        return self.model_store or self.state_dir / "models"

    @property
    def artifact_store_dir(self) -> Path:
        return self.artifact_store or self.cache_dir / "models"


# --- loading ------------------------------------------------------------------------------------

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(
    r"^\s*((?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)(?:\s*\.\s*(?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+))*)\s*="
)


def _dotted(text: str) -> tuple[str, ...]:
    parts = re.findall(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+)", text)
    return tuple(a or b or c for a, b, c in parts)


def key_line(text: str, path: Sequence[str | int]) -> int | None:
    """1-based line where the key at ``path`` is written in TOML ``text`` (None if not found).

    Follows ``[table]`` headers and dotted keys; for a missing sub-key it returns the line of
    the nearest parent that is written, so an error still points somewhere useful.
    """
    keys = tuple(str(p) for p in path if not isinstance(p, int))
    best: tuple[int, int] | None = None  # (matched depth, line)
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header and "=" not in line.split("]")[0]:
            table = _dotted(header.group(1))
            full = table
        else:
            key = _KEY.match(line)
            if not key:
                continue
            full = table + _dotted(key.group(1))
        if full[: len(keys)] == keys:
            return number
        if keys[: len(full)] == full and (best is None or len(full) > best[0]):
            best = (len(full), number)
    return best[1] if best and best[0] > 0 else None


def _set_path(data: dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path)}: {part} is not a table")
        node = child
    node[path[-1]] = value


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """``KATAGO_EDGE_A__B=value`` entries as a nested dict (keys lower-cased)."""
    result: dict[str, Any] = {}
    known = set(AgentConfig.model_fields)
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if path[0] not in known:
            continue  # KATAGO_EDGE_MODELS, KATAGO_EDGE_LOG_LEVEL, ... belong to other tools
        _set_path(result, path, value)
    return result


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(exc: ValidationError, source: str, text: str | None, env: Mapping[str, Any]) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        dotted = ".".join(loc)
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        where = source
        env_name = ENV_PREFIX + "__".join(p.upper() for p in loc)
        if _lookup(env, loc) is not None:
            where = f"environment {env_name}"
        elif text is not None:
            number = key_line(text, loc)
            where = f"{source}:{number}" if number else source
        lines.append(f"{where}: {dotted}: {message}")
    return "; ".join(lines)


def _lookup(data: Mapping[str, Any], loc: Sequence[str]) -> Any:
    node: Any = data
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def parse_config(
    text: str | None,
    source: str = "<config>",
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Validate TOML ``text`` (None = no file) merged with env and flag overrides."""
    data: dict[str, Any] = {}
    if text is not None:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    from_env = env_overrides(os.environ if env is None else env)
    merged = _merge(_merge(data, from_env), overrides or {})
    try:
        return AgentConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, text, from_env)) from exc


def add_config_argument(parser: argparse._ActionsContainer, uses: str) -> None:
    """``--config FILE``, the agent TOML a command reads (``find_config``: the one ``serve`` reads
    when not given); ``uses`` says what the command takes from it."""
    parser.add_argument(
        "--config",
        type=Path,
        help=f"agent TOML: {uses} (default: the one `serve` reads: $CONFIGURATION_DIRECTORY/agent.toml, "
        f"else {', '.join(map(str, DEFAULT_CONFIG_PATHS))}, else the defaults)",
    )


def find_config(explicit: Path | None) -> Path | None:
    """The config file to read: the explicit one, ``$CONFIGURATION_DIRECTORY/agent.toml``, or /etc."""
    if explicit is not None:
        return explicit
    conf_dir = os.environ.get("CONFIGURATION_DIRECTORY")
    candidates = [Path(conf_dir.split(":")[0]) / "agent.toml"] if conf_dir else []
    candidates += list(DEFAULT_CONFIG_PATHS)
    return next((c for c in candidates if c.is_file()), None)


def load_config(
    path: Path | None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Read and validate the config file at ``path`` (None = defaults only)."""
    text = None
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc
    return parse_config(text, str(path) if path else "<defaults>", env, overrides)


def render_toml(config: AgentConfig) -> str:
    """A TOML text that loads back to ``config`` (what ``install.sh`` writes, minus comments)."""
    dumped = config.model_dump(mode="json", exclude_none=True)
    top = [f"{k} = {_toml_value(v)}" for k, v in dumped.items() if not isinstance(v, dict)]
    tables = ["\n" + toml_table(k, v) for k, v in dumped.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n" + "\n".join(tables) + "\n"


def toml_table(name: str, values: Mapping[str, Any]) -> str:
    """``[name]`` and its keys, one a line (tables inside it as inline tables)."""
    return f"[{name}]\n" + "\n".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)
