"""``katago-edge serve``: the agent daemon.

Start-up, in order (each step's ``STATUS=`` goes to systemd, each failure ends in one line that
says what to do, and exit code 1)::

    config (TOML + KATAGO_EDGE_* + flags) ─► plan (hardware probe, profile) ─► network (fetch,
    convert once, cached by hash) ─► engine ─► self-test query answered ─► Unix socket, WebSocket,
    MQTT ─► READY=1 ─► serving loop

The serving loop runs in the main thread. Every tick it asks the engine for its statistics (a
hung engine blocks here, the watchdog pings stop, and systemd restarts the service), pings the
watchdog at half of ``WATCHDOG_USEC``, refreshes ``STATUS=`` and acts on signals. Signal handlers
only set events:

- SIGTERM / SIGINT: ``STOPPING=1``; the transports stop taking work; the engine finishes or
  terminates in-flight queries, so each gets its final response; MQTT publishes ``stopped``;
  exit 0, within ``stop_timeout`` (keep it below the unit's ``TimeoutStopSec``).
- SIGHUP: re-read the config and the profiles. A changed network, profile, engine or runtime
  builds a new engine, tests it and switches to it (queries running on the old one finish there);
  changed transport settings restart only that transport, so the broker connection stays up
  when its settings did not change. A bad new config is logged and the old one kept.

A broker that is down does not stop local serving: the MQTT transport reconnects in the
background.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.app.config import AgentConfig, add_config_argument, find_config, load_config, split_host_port
from agent.app.notify import Notifier
from agent.app.service_switch import ProgressWatch, ServiceSwitch, self_test
from agent.app.startup import Plan, build_engine, build_service, make_plan
from agent.errors import AgentError, ConfigError, DeploymentError, TransportError
from agent.models.serving import NetworkReport
from agent.progress import ProgressDisplay
from agent.transports.session import LocalTransport

if TYPE_CHECKING:
    from agent.app.deployment import Deployer
    from agent.app.health import HealthCollector
    from agent.app.thermal import ThermalGuard
    from agent.engines.base import Engine
    from agent.protocol.service import AnalysisService
    from agent.transports.mqtt.transport import MqttTransport

logger = logging.getLogger(__name__)

SELF_TEST_TIMEOUT = 300.0  # a first evaluation on a Pi (or a TensorRT engine load) can take minutes
TICK = 0.5
ENGINE_STALL_S = 120.0  # no NN evaluation for this long with searches running = wedged


def configure_serve(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser, "what to serve and how")
    parser.add_argument("--model", help="network: path, URL or model-store name ('fake' for tests)")
    parser.add_argument("--broker", metavar="HOST:PORT", help="MQTT broker ('none' = no MQTT)")
    parser.add_argument("--device-id", help="device id (MQTT topic level; default: host name)")
    parser.add_argument("--profile", help="profile name instead of the one chosen from the hardware")
    parser.add_argument("--socket", type=Path, help="Unix socket path ('none' = no socket)")
    parser.add_argument("--websocket", metavar="HOST:PORT", help="WebSocket endpoint ('none' = off)")
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="fetch + convert the network and test the engine, then exit (install.sh uses it)",
    )


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line flags as config overrides (the highest precedence)."""
    out: dict[str, Any] = {}
    if args.model:
        out["model"] = args.model
    if args.device_id:
        out["device_id"] = args.device_id
    if args.profile:
        out["profile"] = args.profile
    if args.broker:
        out["mqtt"] = _endpoint("--broker", args.broker, 1883)
    if args.socket:
        out["socket"] = (
            {"enabled": False} if str(args.socket) == "none" else {"enabled": True, "path": args.socket}
        )
    if args.websocket:
        out["websocket"] = _endpoint("--websocket", args.websocket, 6470)
    return out


def _endpoint(flag: str, value: str, default_port: int) -> dict[str, Any]:
    """``HOST[:PORT]`` (or ``none``) of ``flag`` as the override of its config table."""
    if value == "none":
        return {"enabled": False}
    try:
        host, port = split_host_port(value, default_port)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from exc
    return {"enabled": True, "host": host, "port": port}


def command_serve(args: argparse.Namespace) -> int:
    overrides = flag_overrides(args)
    path = find_config(args.config)
    config = load_config(path, overrides=overrides)
    daemon = Daemon(config, path, overrides)
    if args.prepare_only:
        return daemon.prepare()
    return daemon.run()


def _close_later(service: AnalysisService | None, timeout: float) -> None:
    """Close a replaced service in a thread of its own: the queries running on it finish there."""
    if service is not None:
        threading.Thread(target=service.close, args=(timeout,), name="old-engine").start()


class Daemon:
    """One agent: owns the engine, the service and the transports for its lifetime."""

    def __init__(
        self,
        config: AgentConfig,
        config_path: Path | None = None,
        flag_overrides: dict[str, Any] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self._flags = flag_overrides or {}
        self.notifier = notifier or Notifier()
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.ready_event = threading.Event()
        self.plan: Plan | None = None
        self.network: NetworkReport | None = None  # what serves, and every fallback with its reason
        self.engine: Engine | None = None
        self.service: AnalysisService | None = None
        self.switch: ServiceSwitch | None = None
        self.local: dict[str, LocalTransport] = {}  # "unix", "websocket"
        self.mqtt: MqttTransport | None = None
        self.thermal: ThermalGuard | None = None
        self.progress = ProgressWatch(ENGINE_STALL_S)
        self._stall_logged = False
        self.health_collector: HealthCollector | None = None
        self.started_at = time.time()
        self.deployer: Deployer | None = None  # networks deployed over MQTT

    # -- signals ------------------------------------------------------------------------------------
    def install_signal_handlers(self, serving: bool) -> None:
        """SIGHUP is an event from the start (its default would kill us); SIGTERM and SIGINT only
        once serving: during start-up (a conversion can take minutes) their default action ends
        the process at once, which is right since nothing is being served yet."""
        if threading.current_thread() is not threading.main_thread():
            return  # tests drive the events directly
        if serving:
            signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
            signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())
        else:
            signal.signal(signal.SIGHUP, lambda *_: self.reload_event.set())

    def stop(self) -> None:
        self.stop_event.set()

    # -- life cycle -----------------------------------------------------------------------------------
    def run(self) -> int:
        self.install_signal_handlers(serving=False)
        try:
            self._start()
        except AgentError as exc:
            self.notifier.status(f"failed: {exc}")
            self._close_all(timeout=2.0)
            raise
        self._serve()
        self._shutdown()
        return 0

    def prepare(self) -> int:
        """Plan, prepare the network and test the engine once; the caches make the start fast."""
        self.plan = make_plan(self.config)
        self.engine, self.service = self._new_engine(self.plan)
        self.service.close(5.0)
        network = self.config.model or f"{self.plan.recommended_network} (recommended by the profile)"
        serving = f", serving {self.network.summary()}" if self.network else ""
        print(f"ready: profile {self.plan.profile}, engine {self.plan.engine}, network {network}{serving}")
        return 0

    def _start(self) -> None:
        self.notifier.status("detecting hardware and choosing a profile")
        if self.config.mqtt.enabled:
            from agent.app.deployment import Deployer

            self.deployer = Deployer(self.config.state_dir, self.config.model_store_dir)
            self.config = self.deployer.effective(self.config)  # a deployed network, if any
        self.plan = make_plan(self.config)
        for reason in self.plan.reasons:
            logger.info("profile: %s", reason)
        self.engine, self.service = self._new_engine(self.plan)
        self.thermal = self._start_thermal_guard(self.plan)
        self.switch = ServiceSwitch(self.service, self.thermal, health=self.health)
        self.install_signal_handlers(serving=True)  # from the first client on, stops are clean
        self.notifier.status("starting transports")
        self._start_local_transports()
        if self.deployer is not None:
            from agent.app.startup import local_network

            source = local_network(self.config, self.plan)
            self.deployer.start(
                self.config, source, self.swap_network, self._announce, link=lambda: self.mqtt
            )
        self._start_mqtt()
        self.ready_event.set()
        self.notifier.ready(self._serving_status())
        logger.info("serving (profile %s, engine %s)", self.plan.profile, self.plan.engine)

    def _start_thermal_guard(self, plan: Plan) -> Any:
        if plan.profile_model is None:
            return None
        from agent.app.thermal import ThermalGuard

        guard = ThermalGuard.from_profile(plan.profile_model, root=self.config.root)
        guard.check()
        guard.start()
        return guard

    def _new_engine(self, plan: Plan) -> tuple[Engine, AnalysisService]:
        with ProgressDisplay("preparing the network") as prepare:
            engine, report = build_engine(self.config, plan, self.notifier.status, prepare)
        service = build_service(engine)
        self.notifier.status("testing the engine with one query")
        self.notifier.extend_timeout(SELF_TEST_TIMEOUT + 30)
        try:
            seconds = self_test(service, SELF_TEST_TIMEOUT)
        except AgentError:
            engine.close(2.0)
            raise
        logger.info("engine answered its test query in %.2f s", seconds)
        self.network = report
        return engine, service

    def _serve(self) -> None:
        while not self.stop_event.is_set():
            now = time.monotonic()
            if self.reload_event.is_set():
                self.reload_event.clear()
                self.reload()
            if self.notifier.watchdog_due(now):
                # stats() blocks if the engine is wedged, and a stall means no progress: either
                # way no ping, and systemd restarts us after WatchdogSec
                if self.engine is None or self.progress.alive(self.engine.stats(), now):
                    self.notifier.ping(now)
                elif not self._stall_logged:
                    self._stall_logged = True
                    logger.error(
                        "engine made no progress for %.0f s with searches running; "
                        "stopping watchdog pings so that systemd restarts the service",
                        self.progress.stall_s,
                    )
            self.notifier.status(self._serving_status())
            wait = (
                TICK if self.notifier.watchdog_every is None else min(TICK, self.notifier.watchdog_every / 2)
            )
            self.stop_event.wait(wait)

    def _shutdown(self) -> None:
        self.notifier.stopping("stopping: finishing in-flight queries")
        logger.info("stopping: no new work; finishing in-flight queries")
        deadline = time.monotonic() + self.config.stop_timeout
        for transport in self.local.values():
            transport.stop_accepting()
        # A search may have millions of visits to go: cut running ones short (each still sends its
        # final response with what it found) and answer queued ones with noResults.
        try:
            if self.engine is not None:
                self.engine.terminate_all()
        except AgentError as exc:
            logger.warning("terminating in-flight queries failed: %s", exc)
        self._close_all(timeout=max(1.0, deadline - time.monotonic()))
        logger.info("stopped")

    def _close_all(self, timeout: float) -> None:
        """Engine first (its final responses still go out), then MQTT (``stopped``), then local."""
        share = max(0.5, timeout * 0.6)
        if self.deployer is not None:
            self.deployer.stop()
        if self.service is not None:
            try:
                self.service.close(share)
            except AgentError as exc:
                logger.warning("engine did not close cleanly: %s", exc)
        mqtt, self.mqtt = self.mqtt, None
        if mqtt is not None:
            mqtt.stop(clean=True, timeout=max(0.5, timeout * 0.2))
        for transport in self.local.values():
            transport.close(timeout=max(0.5, timeout * 0.2))
        self.local.clear()
        if self.thermal is not None:
            self.thermal.stop()

    # -- transports -----------------------------------------------------------------------------------
    def _start_local_transports(self) -> None:
        if self.config.socket.enabled:
            self._start_transport("unix")
        if self.config.websocket.enabled:
            self._start_transport("websocket")

    def _start_transport(self, name: str) -> None:
        assert self.switch is not None
        transport: LocalTransport
        if name == "unix":
            from agent.transports.local.unix_socket import UnixSocketTransport

            transport = UnixSocketTransport(self.switch, self.config.socket.path, self.config.socket.mode)
        else:
            from agent.transports.local.websocket import WebSocketTransport

            ws = self.config.websocket
            transport = WebSocketTransport(self.switch, ws.host, ws.port, ws.max_message_bytes, ws.token_file)
        transport.start()
        self.local[name] = transport

    def _start_mqtt(self) -> None:
        if not self.config.mqtt.enabled:
            return
        assert self.switch is not None
        from agent.transports.mqtt.transport import MqttTransport

        transport = MqttTransport(
            self.config.mqtt,
            self.config.device_id,
            self.switch.handle_query,
            health_source=self.health,
            status_info=self.status_info,
            on_desired=self.deployer.offer if self.deployer is not None else None,
        )
        try:
            transport.start()
        except TransportError as exc:  # a broker that is down must not stop local serving
            logger.warning("MQTT unavailable, serving locally only: %s", exc)
        self.mqtt = transport

    def websocket_url(self) -> str | None:
        from agent.transports.local.websocket import WebSocketTransport

        ws = self.local.get("websocket")
        return ws.url if isinstance(ws, WebSocketTransport) else None

    # -- reporting ------------------------------------------------------------------------------------
    def local_counts(self) -> dict[str, dict[str, int]]:
        """Connected clients and queries in flight of each local transport (health, status)."""
        return {name: {"clients": t.clients, "pending": t.pending} for name, t in list(self.local.items())}

    def _serving_status(self) -> str:
        counts = self.local_counts().values()
        clients = sum(c["clients"] for c in counts)
        pending = sum(c["pending"] for c in counts)
        return f"serving: {clients} local clients, {pending} queries in flight"

    def status_info(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "version": __version__,
            "profile": plan.profile if plan else None,
            "engine": plan.engine if plan else None,
            "hardware": plan.hardware_model if plan else None,
            "network": self.config.model,
            "serving": self.network.serving if self.network else None,
            "fallback": bool(self.network and self.network.fell_back),
            "deployment": self.deployer.report() if self.deployer is not None else None,
        }

    def health(self) -> dict[str, Any]:
        from agent.app.daemon_health import snapshot

        return snapshot(self)

    # -- deployments (agent.app.deployment) ---------------------------------------------------------
    def swap_network(self, config: AgentConfig) -> None:
        """Build and self-test the engine for ``config`` (through the model store), then switch to it:
        queries running finish on the old engine, new ones go to the new one. Raises
        ``AgentError`` and keeps the old engine when the new one cannot serve, or serves only a
        fallback where the old one served its first choice."""
        plan = make_plan(config)
        with ProgressDisplay("preparing the deployed network") as prepare:
            engine, report = build_engine(config, plan, self.notifier.status, prepare)
        service = build_service(engine)
        try:
            self_test(service, SELF_TEST_TIMEOUT)
            if report is not None and report.fell_back and not (self.network and self.network.fell_back):
                raise DeploymentError(f"it would serve a fallback: {report.summary()}")
        except AgentError:
            engine.close(2.0)
            raise
        assert self.switch is not None
        old_service = self.service
        self.engine, self.service, self.plan, self.network, self.config = (
            engine,
            service,
            plan,
            report,
            config,
        )
        self.switch.current = service
        self.health_collector = None  # the network's name in health follows
        logger.info("deployment: now serving %s (%s)", config.model, report.summary() if report else "-")
        _close_later(old_service, config.stop_timeout)

    def _announce(self, event: dict[str, Any]) -> None:
        """A deployment step: an event on the deployment topic, then status and health again."""
        mqtt = self.mqtt
        if mqtt is None:
            return
        mqtt.publish_event(event)
        mqtt.publish_status()
        mqtt.publish_health()

    # -- SIGHUP ---------------------------------------------------------------------------------------
    def reload(self) -> None:
        """Apply a changed config; keep serving with the old one if the new one is bad."""
        self.notifier.reloading()
        logger.info("SIGHUP: reloading %s", self.config_path or "the defaults")
        try:
            new = load_config(self.config_path, overrides=self._flags)
            if self.deployer is not None:
                new = self.deployer.effective(new)
            plan = make_plan(new)
        except AgentError as exc:
            logger.error("reload failed, keeping the running config: %s", exc)
            self.notifier.ready(self._serving_status())
            return
        old, self.config = self.config, new
        try:
            self._apply(old, new, plan)
        except AgentError as exc:
            logger.error("reload incomplete: %s", exc)
        self.notifier.ready(self._serving_status())

    def _apply(self, old: AgentConfig, new: AgentConfig, plan: Plan) -> None:
        engine_keys = {"model", "engine", "katago", "root", "overrides", "profile"}
        if plan != self.plan or old.model_dump(include=engine_keys) != new.model_dump(include=engine_keys):
            logger.info("reload: new engine (profile %s)", plan.profile)
            engine, service = self._new_engine(plan)
            old_service, self.service, self.engine, self.plan = self.service, service, engine, plan
            assert self.switch is not None
            self.switch.current = service
            _close_later(old_service, new.stop_timeout)
            if self.thermal is not None:
                self.thermal.stop()
            self.thermal = self.switch.guard = self._start_thermal_guard(plan)
            self.health_collector = None  # versions and thermal source follow the new plan
        for name, before, after in (
            ("unix", old.socket, new.socket),
            ("websocket", old.websocket, new.websocket),
        ):
            if before != after:
                if name in self.local:
                    self.local.pop(name).close()
                if after.enabled:
                    self._start_transport(name)
        if old.mqtt != new.mqtt or old.device_id != new.device_id:
            mqtt, self.mqtt = self.mqtt, None
            if mqtt is not None:
                mqtt.stop(clean=True)
            self._start_mqtt()
