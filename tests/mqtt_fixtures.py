"""Fixtures for the MQTT tests (tests/transports/mqtt, tests/fleet): a real mosquitto per test,
agents and requesters bound to it. A pytest plugin (``pytest_plugins`` in tests/conftest.py), so
every folder may use them (tests/app and tests/fleet run daemons and the CLI on this broker)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_MQTT_HELPERS = Path(__file__).resolve().parent / "transports" / "mqtt"
if str(_MQTT_HELPERS) not in sys.path:
    sys.path.insert(0, str(_MQTT_HELPERS))

from mqtt_support import MOSQUITTO, NEEDS_MOSQUITTO, Mosquitto, StubService  # noqa: E402

from agent.transports.mqtt.client import MqttRequester  # noqa: E402
from agent.transports.mqtt.transport import MqttSettings, MqttTransport  # noqa: E402


def fake_health() -> dict[str, Any]:
    return {"cpu_percent": 12.5, "memory_percent": 40.0, "temperature_c": 51.0, "throttled": False}


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp folder: Unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ke-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def broker(short_tmp: Path) -> Iterator[Mosquitto]:
    if MOSQUITTO is None:
        pytest.skip(NEEDS_MOSQUITTO)
    workdir = short_tmp / "broker"
    workdir.mkdir()
    b = Mosquitto(workdir)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def settings(broker: Mosquitto) -> MqttSettings:
    return MqttSettings(host="127.0.0.1", port=broker.port, health_interval_s=0.5, reconnect_max_s=2)


@pytest.fixture
def make_agent(settings: MqttSettings) -> Iterator[Callable[..., MqttTransport]]:
    agents: list[MqttTransport] = []

    def make(
        device: str = "dev1",
        service: Any = None,
        config: MqttSettings | None = None,
        connect: bool = True,
        **kwargs: Any,
    ) -> MqttTransport:
        service = service or StubService()
        kwargs.setdefault("health_source", fake_health)
        kwargs.setdefault("status_info", {"profile": "test", "engine": "stub"})
        agent = MqttTransport(config or settings, device, service.handle_query, **kwargs)
        agent.start()
        agents.append(agent)
        if connect:
            assert agent.wait_connected(10), "agent did not connect"
        return agent

    yield make
    for agent in agents:
        agent.stop(clean=True, timeout=2)


@pytest.fixture
def make_requester(settings: MqttSettings) -> Iterator[Callable[..., MqttRequester]]:
    clients: list[MqttRequester] = []

    def make(config: MqttSettings | None = None, **kwargs: Any) -> MqttRequester:
        r = MqttRequester(config or settings, **kwargs)
        r.connect(10)
        clients.append(r)
        return r

    yield make
    for r in clients:
        r.close()


@pytest.fixture
def make_service() -> Iterator[Callable[..., Any]]:
    """D's AnalysisService over the native engine and the deterministic fake network."""
    from agent.backends.fake import FakeNet
    from agent.engines.native import NativeEngine
    from agent.protocol.service import AnalysisService
    from agent.search.params import SearchParams

    services: list[AnalysisService] = []

    def make(delay: float = 0.002, max_visits: int = 20, name: str = "fake") -> AnalysisService:
        engine = NativeEngine(
            FakeNet(delay=delay, name=name),
            default_params=SearchParams(max_visits=max_visits),
            randomize=False,
            seed=7,
        )
        service = AnalysisService(engine)
        services.append(service)
        return service

    yield make
    for service in services:
        service.close(timeout=5)


@pytest.fixture
def real_service(make_service: Callable[..., Any]) -> Any:
    return make_service()
