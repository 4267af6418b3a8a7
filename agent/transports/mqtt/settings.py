"""``MqttSettings``: the ``[mqtt]`` section of the agent config, and the password look-up.

The model imports no paho, so the config layer (``agent.app.config``) can embed it cheaply; it is
re-exported by :mod:`agent.transports.mqtt.transport`. Example TOML::

    [mqtt]
    host = "broker.lan"
    port = 8883
    ca_file = "/etc/katago-edge/ca.crt"
    username = "pi-kitchen"
    password_credential = "mqtt-password"   # systemd LoadCredential=mqtt-password:/etc/...

The password is never stored in the config itself: it comes from exactly one of a file
(``password_file``), an environment variable (``password_env``) or a systemd credential
(``password_credential``, a file name inside ``$CREDENTIALS_DIRECTORY``). It is never logged.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.errors import ConfigError
from agent.transports.mqtt.topics import check_prefix


class MqttSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    topic_prefix: str = "katago"
    client_id: str | None = Field(None, description="default: katago-edge-<device id>")
    keepalive_s: int = Field(30, ge=5, le=3600)

    # security
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    password_credential: str | None = None
    tls: bool = Field(False, description="use TLS; implied by ca_file")
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = Field(False, description="skip the broker host name check (testing only)")

    # sessions, delivery
    session_expiry_s: int = Field(3600, ge=0, description="broker keeps our session this long while away")
    reply_expiry_s: int = Field(300, ge=1, description="Message Expiry Interval on our replies")
    outgoing_queue: int = Field(1000, ge=1, description="replies held while disconnected; more are dropped")
    reconnect_min_s: int = Field(1, ge=1)
    reconnect_max_s: int = Field(60, ge=1)
    auth_retry_limit: int = Field(5, ge=0, description="refused logins before giving up; 0 = never")

    # health
    health_interval_s: float = Field(30.0, gt=0)
    health_expiry_s: int | None = Field(None, ge=1, description="default: 3 x health_interval_s")

    # requests
    fleet_requests: bool = Field(True, description="also take requests from the shared fleet topic")
    share_group: str = "katago-edge"
    max_payload_bytes: int = Field(65536, ge=256)
    max_concurrent: int = Field(1, ge=1)
    max_queue: int = Field(16, ge=0, description="queued requests; with max_concurrent, the Receive Maximum")
    max_backlog_bytes: int = Field(
        8 << 20, ge=0, description="payload bytes held beyond max_queue (broker over-delivery) before busy"
    )
    max_requester_share: float = Field(
        0.75,
        gt=0,
        le=1,
        description="share of max_backlog_bytes one requester may hold; the rest stays for the others",
    )
    request_timeout_s: float = Field(600.0, gt=0)
    dedup_ttl_s: float = Field(600.0, ge=0)

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        try:
            return check_prefix(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc

    @model_validator(mode="after")
    def _consistent(self) -> MqttSettings:
        sources = [s for s in (self.password_file, self.password_env, self.password_credential) if s]
        if len(sources) > 1:
            raise ValueError("give at most one of password_file, password_env, password_credential")
        if sources and not self.username:
            raise ValueError("a password needs a username")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self

    @property
    def use_tls(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None

    @property
    def health_expiry(self) -> int:
        return self.health_expiry_s or max(1, int(3 * self.health_interval_s))

    def with_broker(self, broker: str | None) -> MqttSettings:
        """Copy with ``host`` / ``port`` taken from a ``HOST[:PORT]`` string (CLI ``--broker``)."""
        if not broker:
            return self
        host, sep, port = broker.rpartition(":")
        if not sep or not port.isdigit():
            return self.model_copy(update={"host": broker})
        return self.model_copy(update={"host": host.strip("[]"), "port": int(port)})


def resolve_password(settings: MqttSettings) -> str | None:
    """The broker password from its configured source, or None; raises ``ConfigError`` if unreadable."""
    if settings.password_env:
        value = os.environ.get(settings.password_env)
        if value is None:
            raise ConfigError(f"MQTT password: environment variable {settings.password_env} is not set")
        return value
    path: Path | None = settings.password_file
    if settings.password_credential:
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if not cred_dir:
            raise ConfigError(
                f"MQTT password: credential {settings.password_credential!r} requested but "
                "$CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the systemd unit)"
            )
        path = Path(cred_dir) / settings.password_credential
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"MQTT password: cannot read {path}: {exc.strerror}") from exc
