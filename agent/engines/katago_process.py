"""``KataGoEngine``: a supervised ``katago analysis`` child behind the ``Engine`` interface.

Routing lives in ``agent.engines.katago_pending`` (internal ids, one final response per analysed
turn). The child gets the query as the client sent it (``AnalysisQuery.raw``) and answers with its
own JSON. KataGo's warnings pass through; ``reports_own_warnings`` tells the ``AnalysisService``
not to add its own.

Supervision (one thread, ``katago-supervisor``):

- a child that exits is restarted after a short back-off, at most ``restart_budget`` times per
  ``restart_window_s``; past that the engine is ``failed``: pending and new queries get an error
  naming the cause and KataGo's last stderr lines;
- queries in flight when the child died are re-sent once (only their unanswered turns) to the new
  child; a query whose second child also dies is answered with an error naming the cause;
- a child that writes nothing for ``hang_timeout_s`` while work is pending is killed and restarted.
  Long searches are quiet, so after a third of that limit a ``query_version`` ping is sent: KataGo
  answers actions from its input thread at once, even while every search thread is busy;
- a child that exits or stays silent at start raises ``EngineError`` with its last stderr lines.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from pathlib import Path
from typing import Any

from agent.engines.base import AnalysisQuery, Emit, Engine
from agent.engines.katago_binary import KataGoBinary, KataGoSettings, binary_from_path, find_katago
from agent.engines.katago_child import KataGoChild
from agent.engines.katago_config import prepare_config
from agent.engines.katago_pending import Delivery, Pending, PendingTable
from agent.errors import EngineError
from agent.search.params import SearchParams

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 8.0
TERMINATE_GRACE_S = 30.0
CLOSE_GRACE_S = 3.0


class KataGoEngine(Engine):
    """Runs ``katago analysis -model M -config C`` and keeps it running."""

    reports_own_warnings = True

    def __init__(
        self,
        binary: Path | KataGoBinary,
        model: Path,
        settings: KataGoSettings | None = None,
        config_path: Path | None = None,
        override_config: dict[str, str] | None = None,
    ) -> None:
        self.binary = binary if isinstance(binary, KataGoBinary) else binary_from_path(Path(binary))
        self.model = Path(model)
        self.settings = settings or KataGoSettings()
        self.config_file: Path | None = None
        self._config_path = config_path
        self._extra_overrides = dict(override_config or {})
        self._overrides: dict[str, str] = {}
        self._table = PendingTable()
        self._lock = threading.Lock()  # child, state, info; taken before the table's lock, never after
        self._child: KataGoChild | None = None
        self._generation = 0
        self._state = "new"
        self._draining = False  # close() called: no new queries
        self._failure = ""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._restart_times: collections.deque[float] = collections.deque()
        self._info: dict[str, Any] = {}
        self._started_at = time.monotonic()
        self._last_stderr: list[str] = []
        self._last_exit = ""

    # ------------------------------------------------------------------------------ lifecycle
    def start(self) -> KataGoEngine:
        """Write the config, start the child, read version and models; raises ``EngineError``."""
        with self._lock:
            if self._state != "new":
                raise EngineError(f"KataGo engine already {self._state}")
            self._state = "starting"
        try:
            self.config_file, overrides = prepare_config(self.settings, self._config_path)
            self._overrides = {**overrides, **self._extra_overrides}
            child = self._spawn_ready()
        except EngineError as exc:
            with self._lock:
                self._state, self._failure = "failed", str(exc)
            raise
        with self._lock:
            self._child, self._state = child, "running"
        self._supervisor = threading.Thread(target=self._supervise, name="katago-supervisor", daemon=True)
        self._supervisor.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Let queued work finish for most of ``timeout``, then terminate the rest and stop.

        While work drains the supervisor keeps running, so a child that dies or hangs meanwhile
        is still restarted or killed: even ``timeout=1e9`` (stdin closed without
        ``-quit-without-waiting``, like KataGo) cannot wait forever on a hung child. The last
        ``CLOSE_GRACE_S`` (or a fifth of a short timeout) is left for terminated searches to
        report their final responses.
        """
        deadline = time.monotonic() + timeout
        grace = min(CLOSE_GRACE_S, timeout / 5)
        with self._lock:
            if self._draining or self._state == "stopped":
                return
            self._draining = True
        while time.monotonic() < deadline - grace and self._table.queries():
            time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        if self._supervisor is not None:
            self._supervisor.join(max(0.1, deadline - time.monotonic()))
        with self._lock:
            child = self._child
            if self._state != "failed":
                self._state = "stopping"
        if child is not None and child.alive():
            if self._table.queries():
                self._send_action(child, "terminate_all")
            while time.monotonic() < deadline and self._table.queries():
                time.sleep(0.02)
            child.stop(max(0.5, deadline - time.monotonic()))
        _deliver(self._table.fail(lambda p: True, "the KataGo engine was closed before this query finished"))
        with self._lock:
            if self._state != "failed":
                self._state = "stopped"
            self._child = None

    # ------------------------------------------------------------------------------ Engine API
    @property
    def default_params(self) -> SearchParams:
        """KataGo applies its own config; the service validates with the plain defaults."""
        return SearchParams()

    def submit(self, query: AnalysisQuery, emit: Emit) -> None:
        self.submit_raw(query.raw, emit)

    def submit_raw(self, query: dict[str, Any], emit: Emit) -> None:
        """Send a query to the child as it is (validated by the caller)."""
        if query.get("analyzeTurns") == []:
            # KataGo analyses nothing and answers nothing: sent, it would wait in the table forever
            self._table.count("submitted")
            self._table.count("completed")
            return
        with self._lock:
            if self._draining or self._state not in ("running", "restarting"):
                error = self._unavailable_message()
            else:
                error = ""
                child = self._child if self._state == "running" else None
                pending = self._table.new_query(query, emit, child.gen if child is not None else None)
        if error:
            self._table.count("failed")
            _deliver([(emit, {"id": query.get("id"), "error": error})])
        elif child is not None:
            child.write(pending.query)

    def terminate(self, query_id: str, turn_numbers: list[int] | None = None) -> None:
        for p in self._table.queries_of(query_id):
            child = self._child
            if p.sent_gen is None:  # waiting for a restarted child: answered like unstarted work
                _deliver(self._table.drop_waiting(turn_numbers, only=p))
            elif child is not None and child.gen == p.sent_gen:
                extra: dict[str, Any] = {} if turn_numbers is None else {"turnNumbers": turn_numbers}
                self._send_action(child, "terminate", terminateId=p.key, **extra)

    def terminate_all(self, turn_numbers: list[int] | None = None) -> None:
        _deliver(self._table.drop_waiting(turn_numbers))
        child = self._child
        if child is not None:
            extra: dict[str, Any] = {} if turn_numbers is None else {"turnNumbers": turn_numbers}
            self._send_action(child, "terminate_all", **extra)

    def clear_cache(self) -> None:
        child = self._child
        if child is not None:
            self._send_action(child, "clear_cache")

    def describe(self) -> dict[str, Any]:
        with self._lock:
            info, state = dict(self._info), self._state
        return {
            "engine": "katago",
            "state": state,
            "version": info.get("version"),
            "git_hash": info.get("git_hash"),
            "models": info.get("models", []),
            "binary": str(self.binary.path),
            "binary_source": self.binary.source,
            "model": str(self.model),
            "config": str(self.config_file) if self.config_file else None,
        }

    def stats(self) -> dict[str, Any]:
        counters = self._table.counters
        with self._lock:
            child, now = self._child, time.monotonic()
            recent = [t for t in self._restart_times if now - t <= self.settings.restart_window_s]
            return {
                "engine": "katago",
                "state": self._state,
                "pid": child.proc.pid if child is not None else None,
                "generation": self._generation,
                "pending": self._table.queries(),
                "queries_submitted": counters["submitted"],
                "queries_completed": counters["completed"],
                "queries_failed": counters["failed"],
                "queries_resent": counters["resent"],
                "restarts": counters["restarts"],
                "restarts_in_window": len(recent),
                "hangs_killed": counters["hangs"],
                "last_exit": self._last_exit or None,
                "failure": self._failure or None,
                "uptime_s": round(now - self._started_at, 3),
                "mean_latency_ms": self._table.mean_latency_ms(),
                "stderr_tail": (child.tail() if child is not None else self._last_stderr)[-5:],
            }

    # ------------------------------------------------------------------------------ child side
    def _spawn_ready(self) -> KataGoChild:
        """Start one child and wait until it answered ``query_version`` and ``query_models``."""
        with self._lock:
            self._generation += 1
            gen = self._generation
        cmd = [str(self.binary.path), "analysis", "-model", str(self.model), "-config", str(self.config_file)]
        if self._overrides:
            cmd += ["-override-config", ",".join(f"{k}={v}" for k, v in self._overrides.items())]
        cmd.append("-quit-without-waiting")
        tail_lines = self.settings.stderr_tail_lines
        child = KataGoChild.spawn(cmd, self.binary.environ(), gen, self._on_line, tail_lines)
        waiters = {a: self._send_action(child, a) for a in ("query_version", "query_models")}
        deadline = time.monotonic() + self.settings.start_timeout_s
        while not all(p.done.is_set() for p in waiters.values()):
            exited = child.exited.wait(0.05) or not child.alive()
            if exited or time.monotonic() > deadline:
                if not exited:
                    child.kill()
                child.stop(2.0)
                self._table.forget_actions(gen)
                self._last_stderr = tail = child.tail()
                if exited:
                    why = f"KataGo exited at start (exit code {child.proc.returncode}): {_cause(tail)}"
                else:
                    why = f"KataGo did not answer within {self.settings.start_timeout_s:.0f} s of starting"
                raise EngineError(
                    f"{why}\ncommand: {' '.join(cmd)}\nKataGo's last stderr lines:\n  "
                    + "\n  ".join(tail[-15:])
                )
        version = waiters["query_version"].result or {}
        models = waiters["query_models"].result or {}
        with self._lock:
            self._info = {
                "version": version.get("version"),
                "git_hash": version.get("git_hash"),
                "models": models.get("models", []),
            }
        logger.info("KataGo %s started (pid %d, generation %d)", self._info["version"], child.proc.pid, gen)
        return child

    def _send_action(
        self, child: KataGoChild, action: str, label: str | None = None, **extra: Any
    ) -> Pending:
        pending = self._table.new_action(action, child.gen, label, **extra)
        child.write(pending.query)
        return pending

    def _on_line(self, child: KataGoChild, resp: dict[str, Any]) -> None:
        """Reader thread of ``child``: route one response to its query's ``emit``."""
        delivery = self._table.route(child.gen, resp)
        if delivery is not None:
            _deliver([delivery])
        elif ("error" in resp or "warning" in resp) and not str(resp.get("id", "")).startswith("a"):
            logger.warning("KataGo message for no pending query: %s", resp)

    # ------------------------------------------------------------------------------ supervision
    def _supervise(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
            child = self._child
            if self._stop.is_set() or child is None:
                continue
            if not child.alive():
                self._handle_death(child, f"KataGo exited with code {child.proc.returncode}")
                continue
            self._check_hang(child)
            self._check_query_timeouts(child)

    def _check_hang(self, child: KataGoChild) -> None:
        if not self._table.busy(child.gen):
            return
        quiet = time.monotonic() - child.last_output
        limit = self.settings.hang_timeout_s
        if quiet > limit:
            self._table.count("hangs")
            logger.error(
                "KataGo wrote nothing for %.0f s with work pending; killing pid %d", quiet, child.proc.pid
            )
            child.kill()
            self._handle_death(
                child, f"KataGo hung (no output for {quiet:.0f} s with work pending) and was killed"
            )
        elif quiet > limit / 3 and not self._table.pinging(child.gen):
            self._send_action(child, "query_version", label="ping")

    def _check_query_timeouts(self, child: KataGoChild) -> None:
        limit = self.settings.query_timeout_s
        if limit is None:
            return
        now = time.monotonic()
        for p in self._table.older_than(limit):
            if p.terminated_at is None:
                p.terminated_at = now
                logger.warning("query %s ran past %.0f s; terminating it", p.client_id, limit)
                self._send_action(child, "terminate", terminateId=p.key)
            elif now - p.terminated_at > TERMINATE_GRACE_S:
                late = {id(p)}
                _deliver(self._table.fail(lambda q: id(q) in late, f"no final response within {limit:.0f} s"))  # noqa: B023

    def _handle_death(self, child: KataGoChild, cause: str) -> None:
        child.stop(5.0)  # drains stdout: responses written before the exit are still delivered
        tail = child.tail()
        with self._lock:
            self._child = None
            self._last_stderr, self._last_exit = tail, cause
            if self._state == "running":
                self._state = "restarting"
            twice = {id(p) for p in self._table.on_death(child.gen)}
        logger.error("%s; last stderr lines: %s", cause, " | ".join(tail[-5:]))
        message = f"{cause}; the query had already been re-sent once after a restart"
        _deliver(self._table.fail(lambda p: id(p) in twice, message))
        self._restart(cause)

    def _restart(self, cause: str) -> None:
        failures = 0
        window, budget = self.settings.restart_window_s, self.settings.restart_budget
        while not self._stop.is_set():
            now = time.monotonic()
            while self._restart_times and now - self._restart_times[0] > window:
                self._restart_times.popleft()
            if len(self._restart_times) >= budget:
                tail = "\n  ".join(self._last_stderr[-10:])
                self._give_up(
                    f"{budget} restarts within {window:.0f} s, giving up; last cause: {cause}; "
                    f"KataGo's last stderr lines:\n  {tail}"
                )
                return
            if self._stop.wait(min(MAX_BACKOFF_S, self.settings.restart_backoff_s * 2**failures)):
                return
            self._restart_times.append(time.monotonic())
            self._table.count("restarts")
            try:
                child = self._spawn_ready()
            except EngineError as exc:
                cause, failures = str(exc), failures + 1
                logger.error("KataGo restart failed: %s", exc)
                continue
            with self._lock:
                if self._state != "restarting":  # closed meanwhile
                    child.stop(2.0)
                    return
                self._child, self._state = child, "running"
                to_send = self._table.assign_waiting(child.gen)
            logger.info("KataGo restarted after: %s; re-sending %d queries", cause, len(to_send))
            for p in to_send:
                child.write(p.query)
            return

    def _give_up(self, message: str) -> None:
        logger.error("KataGo engine failed: %s", message)
        with self._lock:
            self._state, self._failure = "failed", message
        _deliver(self._table.fail(lambda p: True, "KataGo engine failed: " + message))

    def _unavailable_message(self) -> str:
        if self._state == "failed":
            return "KataGo engine failed: " + self._failure
        return "KataGo engine is " + (
            "stopping" if self._draining and self._state != "stopped" else self._state
        )


def engine_from_settings(
    settings: KataGoSettings,
    model: Path | str,
    cache_dir: Path | None = None,
    config_path: Path | None = None,
    override_config: dict[str, str] | None = None,
) -> KataGoEngine:
    """The one way in (``agent.app.startup.assemble_engine``, for the daemon and ``analysis``):
    find the binary as ``settings`` say, then build and start the engine. ``config_path``: the
    user's own KataGo ``.cfg``; ``override_config``: ``-override-config`` keys on top.

    ``cache_dir`` (the agent's cache folder) is used when ``settings.cache_dir`` is unset.
    """
    if settings.cache_dir is None and cache_dir is not None:
        settings = settings.model_copy(update={"cache_dir": cache_dir})
    binary = find_katago(settings.binary, settings.resolved_cache_dir(), download=settings.download)
    return KataGoEngine(binary, Path(model), settings, config_path, override_config).start()


def _cause(tail: list[str]) -> str:
    """KataGo's own explanation: the exception text (``what(): ...``) or the last error line."""
    for line in reversed(tail):
        if "what():" in line:
            return line.split("what():", 1)[1].strip()
    for line in reversed(tail):
        if "error" in line.lower():
            return line.strip()
    return tail[-1].strip() if tail else "no output on stderr"


def _deliver(deliveries: list[Delivery]) -> None:
    """Call each ``emit``; a broken transport must not take a reader or the supervisor down."""
    for emit, resp in deliveries:
        try:
            emit(resp)
        except Exception:
            logger.exception("emit failed for a KataGo response (id %s)", resp.get("id"))


KataGoProcessEngine = KataGoEngine  # the name agent.cli.analysis looks up
