"""TLS (certificates made by openssl in the test), password auth, refused credentials."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from mqtt_support import MOSQUITTO, NEEDS_MOSQUITTO, Mosquitto, StubService, add_password

from agent.errors import ConfigError, TransportError
from agent.transports.mqtt.client import MqttRequester
from agent.transports.mqtt.settings import resolve_password
from agent.transports.mqtt.transport import MqttSettings, MqttTransport

SECRET = "s3cr3t-Pa55"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by the CA."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("server", "localhost"), ("client", "pi-kitchen")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=d)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", "san.ext", "-out", f"{name}.crt", cwd=d)  # fmt: skip


@pytest.fixture
def tls_broker(tmp_path: Path):
    if MOSQUITTO is None:
        pytest.skip(NEEDS_MOSQUITTO)
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    make_pki(tmp_path)
    add_password(tmp_path, "pi-kitchen", SECRET)
    for f in tmp_path.glob("*.key"):
        f.chmod(0o644)
    b = Mosquitto(
        tmp_path,
        extra_conf=(
            f"cafile {tmp_path / 'ca.crt'}\ncertfile {tmp_path / 'server.crt'}\nkeyfile {tmp_path / 'server.key'}\n"
            f"require_certificate true\nallow_anonymous false\npassword_file {tmp_path / 'passwords'}\n"
        ),
    )
    b.start()
    yield b
    b.stop()


def tls_settings(b: Mosquitto, **kw: object) -> MqttSettings:
    d = b.workdir
    base = dict(
        host="localhost",
        port=b.port,
        ca_file=d / "ca.crt",
        cert_file=d / "client.crt",
        key_file=d / "client.key",
        username="pi-kitchen",
        reconnect_min_s=1,
        reconnect_max_s=2,
    )
    return MqttSettings(**{**base, **kw})  # type: ignore[arg-type]


def test_security__tls_client_cert_and_password_from_credential(tls_broker, monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text(SECRET + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = tls_settings(tls_broker, password_credential="mqtt-password")
    agent = MqttTransport(settings, "pi-kitchen", StubService().handle_query)
    agent.start()
    try:
        assert agent.wait_connected(10)
        monkeypatch.setenv("REQ_PW", SECRET)
        req = MqttRequester(tls_settings(tls_broker, password_env="REQ_PW"))
        req.connect(10)
        try:
            responses = req.request(agent.topics.request, {"id": "tls", "moves": []}, timeout=10)
        finally:
            req.close()
        assert responses[0]["id"] == "tls" and responses[0]["isDuringSearch"] is False
    finally:
        agent.stop()
    assert SECRET not in caplog.text


def test_security__wrong_password_clear_error_and_bounded_retry(tls_broker, monkeypatch, caplog):
    monkeypatch.setenv("BAD_PW", "wrong")
    settings = tls_settings(tls_broker, password_env="BAD_PW", auth_retry_limit=3)
    agent = MqttTransport(settings, "pi-kitchen", StubService().handle_query)
    t0 = time.monotonic()
    agent.start()
    try:
        with pytest.raises(TransportError, match="refused the login of user 'pi-kitchen'"):
            agent.wait_connected(20)
        elapsed = time.monotonic() - t0
        time.sleep(1.5)  # no further attempts after giving up
        assert agent.stats()["auth_failures"] == 3
        assert elapsed >= 2.5, f"3 attempts with backoff 1 s, 2 s took only {elapsed:.1f} s"
        assert "Bad user name or password" in str(agent.error) or "Not authorized" in str(agent.error)
    finally:
        agent.stop(clean=False)
    attempts = tls_broker.read_log().count("not authorised")
    assert attempts == 3, tls_broker.read_log()
    assert "wrong" not in caplog.text


def test_security__plaintext_client_cannot_reach_tls_broker(tls_broker):
    settings = MqttSettings(host="127.0.0.1", port=tls_broker.port, reconnect_min_s=1)
    with pytest.raises(TransportError):
        MqttRequester(settings).connect(1)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"password_env": "NOPE_NOT_SET"}, "NOPE_NOT_SET is not set"),
        ({"password_file": Path("/nonexistent/pw")}, "cannot read /nonexistent/pw"),
        ({"password_credential": "pw"}, "CREDENTIALS_DIRECTORY is not set"),
    ],
)
def test_security__password_sources_fail_clearly(kw, message, monkeypatch):
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match=message):
        resolve_password(MqttSettings(username="u", **kw))


def test_security__password_file_trailing_newline_stripped(tmp_path):
    (tmp_path / "pw").write_text("abc\n")
    assert resolve_password(MqttSettings(username="u", password_file=tmp_path / "pw")) == "abc"


@pytest.mark.parametrize(
    "kw",
    [
        {"password_env": "A", "password_file": Path("/x")},
        {"password_env": "A"},  # no username
        {"cert_file": Path("/c")},  # no key
        {"topic_prefix": "a/#"},
        {"bogus": 1},
    ],
)
def test_security__settings_rejects_inconsistent_config(kw):
    with pytest.raises(ValueError):
        MqttSettings(**kw)
