"""``KataGoEngine``: a supervised ``katago analysis`` child behind the ``Engine`` interface.

Routing. Every query is re-labelled with an internal id (``k<n>``) before it is written to the
child, because clients of different transports may use the same id; responses are mapped back
to the client's id and handed to that query's ``emit``. A query is finished when every analysed
turn got its final response (``isDuringSearch: false``, also ``noResults`` after terminate) or
KataGo answered it with an error (a field error drops the query). Warnings pass through;
``reports_own_warnings`` tells the ``AnalysisService`` not to add its own.

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

import argparse
import collections
import itertools
import logging
import threading
import time
from pathlib import Path
from typing import Any

from agent.engines.base import Emit, Engine, Response
from agent.engines.katago_binary import (
    KataGoBinary,
    KataGoSettings,
    binary_from_path,
    find_katago,
    prepare_config,
)
from agent.engines.katago_child import KataGoChild, Pending
from agent.errors import EngineError

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
        self._config_path = config_path
        self._extra_overrides = dict(override_config or {})
        self._lock = threading.Lock()
        self._pending: dict[str, Pending] = {}
        self._ids = itertools.count(1)
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
        self._counters = collections.Counter[str]()
        self._latencies: collections.deque[float] = collections.deque(maxlen=500)
        self._started_at = time.monotonic()
        self._last_stderr: list[str] = []
        self._last_exit: str = ""
        self.config_file: Path | None = None
        self._overrides: dict[str, str] = {}

    # ------------------------------------------------------------------------------ lifecycle
    @classmethod
    def from_command_line(cls, args: argparse.Namespace) -> KataGoEngine:
        """``katago-edge analysis --engine katago [--katago PATH] -model M [-config C] ...``, started."""
        settings = KataGoSettings()
        overrides: dict[str, str] = {}
        for item in getattr(args, "override_config", None) or []:
            for part in str(item).split(","):
                if part.strip():
                    key, sep, value = part.partition("=")
                    if not sep:
                        raise EngineError(f"-override-config: expected k=v, got {part.strip()!r}")
                    overrides[key.strip()] = value.strip()
        if getattr(args, "analysis_threads", None):
            overrides["numAnalysisThreads"] = str(args.analysis_threads)
        katago = getattr(args, "katago", None)
        binary = find_katago(Path(katago) if katago else None, download=settings.download)
        config = Path(args.config) if getattr(args, "config", None) else None
        return cls(binary, Path(args.model), settings, config, overrides).start()

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
        while time.monotonic() < deadline - grace and self._has_work():
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
            if self._has_work():
                self._send_action(child, "terminate_all")
            while time.monotonic() < deadline and self._has_work():
                time.sleep(0.02)
            child.stop(max(0.5, deadline - time.monotonic()))
        self._fail_pending(lambda p: True, "the KataGo engine was closed before this query finished")
        with self._lock:
            if self._state != "failed":
                self._state = "stopped"
            self._child = None

    # ------------------------------------------------------------------------------ Engine API
    def submit(self, query: dict[str, Any], emit: Emit) -> None:
        with self._lock:
            if self._draining or self._state not in ("running", "restarting"):
                error = self._unavailable_message()
            else:
                error = ""
                key = f"k{next(self._ids)}"
                sent = dict(query, id=key)
                turns = query.get("analyzeTurns")
                turn_set = set(turns) if isinstance(turns, list) else {len(query.get("moves") or [])}
                pending = Pending(key, str(query.get("id")), sent, emit, turn_set, time.monotonic())
                child = self._child if self._state == "running" else None
                pending.sent_gen = child.gen if child is not None else None
                self._pending[key] = pending
                self._counters["submitted"] += 1
        if error:
            self._counters["failed"] += 1
            _safe_emit(emit, {"id": query.get("id"), "error": error})
        elif child is not None:
            child.write(sent)

    def terminate(self, query_id: str, turn_numbers: list[int] | None = None) -> None:
        with self._lock:
            targets = [p for p in self._pending.values() if p.client_id == query_id and not p.action]
        for p in targets:
            self._terminate_one(p, turn_numbers)

    def terminate_all(self) -> None:
        self.terminate_all_turns(None)

    def terminate_all_turns(self, turn_numbers: list[int] | None) -> None:
        self._drop_waiting(turn_numbers)
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
            info = dict(self._info)
            state = self._state
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
        with self._lock:
            child = self._child
            now = time.monotonic()
            recent = [t for t in self._restart_times if now - t <= self.settings.restart_window_s]
            lat = list(self._latencies)
            out: dict[str, Any] = {
                "engine": "katago",
                "state": self._state,
                "pid": child.proc.pid if child is not None else None,
                "generation": self._generation,
                "pending": sum(1 for p in self._pending.values() if not p.action),
                "queries_submitted": self._counters["submitted"],
                "queries_completed": self._counters["completed"],
                "queries_failed": self._counters["failed"],
                "queries_resent": self._counters["resent"],
                "restarts": self._counters["restarts"],
                "restarts_in_window": len(recent),
                "hangs_killed": self._counters["hangs"],
                "last_exit": self._last_exit or None,
                "failure": self._failure or None,
                "uptime_s": round(now - self._started_at, 3),
                "mean_latency_ms": round(1000 * sum(lat) / len(lat), 3) if lat else None,
                "stderr_tail": (child.tail() if child is not None else self._last_stderr)[-5:],
            }
        return out

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
        child = KataGoChild.spawn(
            cmd, self.binary.environ(), gen, self._on_line, self.settings.stderr_tail_lines
        )
        waiters = {a: self._send_action(child, a, wait=True) for a in ("query_version", "query_models")}
        deadline = time.monotonic() + self.settings.start_timeout_s
        while not all(p.done.is_set() for p in waiters.values()):
            if child.exited.wait(0.05) or not child.alive():
                child.stop(2.0)
                self._forget(gen)
                self._last_stderr = child.tail()
                raise EngineError(
                    f"KataGo exited at start (exit code {child.proc.returncode}): {_cause(child.tail())}\n"
                    f"command: {' '.join(cmd)}\n"
                    "KataGo's last stderr lines:\n  " + "\n  ".join(child.tail()[-15:])
                )
            if time.monotonic() > deadline:
                child.kill()
                child.stop(2.0)
                self._forget(gen)
                self._last_stderr = child.tail()
                raise EngineError(
                    f"KataGo did not answer within {self.settings.start_timeout_s:.0f} s of starting; "
                    "last stderr lines:\n  " + "\n  ".join(child.tail()[-15:])
                )
        version, models = waiters["query_version"].result, waiters["query_models"].result
        with self._lock:
            self._info = {
                "version": (version or {}).get("version"),
                "git_hash": (version or {}).get("git_hash"),
                "models": (models or {}).get("models", []),
            }
        logger.info("KataGo %s started (pid %d, generation %d)", self._info["version"], child.proc.pid, gen)
        return child

    def _send_action(self, child: KataGoChild, action: str, *, wait: bool = False, **extra: Any) -> Pending:
        key = f"a{next(self._ids)}"
        msg = {"id": key, "action": action, **extra}
        pending = Pending(key, key, msg, None, set(), time.monotonic(), action=action)
        pending.sent_gen = child.gen
        with self._lock:
            self._pending[key] = pending
        child.write(msg)
        return pending

    def _on_line(self, child: KataGoChild, resp: dict[str, Any]) -> None:
        """Reader thread of ``child``: route one response to its query's ``emit``."""
        key = resp.get("id")
        with self._lock:
            p = self._pending.get(key) if isinstance(key, str) else None
            if p is None or p.sent_gen != child.gen:
                if "error" in resp or "warning" in resp:
                    logger.warning("KataGo message for no pending query: %s", resp)
                return
            if p.action:
                del self._pending[p.key]
                p.result = resp
                p.done.set()
                return
            finished = "error" in resp
            if "error" not in resp and "warning" not in resp and resp.get("isDuringSearch") is False:
                p.turns.discard(resp.get("turnNumber", -1))
                finished = not p.turns
            if finished:
                del self._pending[p.key]
                self._counters["failed" if "error" in resp else "completed"] += 1
                self._latencies.append(time.monotonic() - p.submitted)
            resp["id"] = p.client_id
            emit = p.emit
        if emit is not None:
            _safe_emit(emit, resp)

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
        if not self._busy(child.gen):
            return
        quiet = time.monotonic() - child.last_output
        limit = self.settings.hang_timeout_s
        if quiet > limit:
            with self._lock:
                self._counters["hangs"] += 1
            logger.error(
                "KataGo wrote nothing for %.0f s with work pending; killing pid %d", quiet, child.proc.pid
            )
            child.kill()
            self._handle_death(
                child, f"KataGo hung (no output for {quiet:.0f} s with work pending) and was killed"
            )
        elif quiet > limit / 3:
            with self._lock:
                pinging = any(p.action == "ping" and p.sent_gen == child.gen for p in self._pending.values())
            if not pinging:
                ping = self._send_action(child, "query_version")
                ping.action = "ping"

    def _check_query_timeouts(self, child: KataGoChild) -> None:
        limit = self.settings.query_timeout_s
        if limit is None:
            return
        now = time.monotonic()
        with self._lock:
            old = [p for p in self._pending.values() if not p.action and now - p.submitted > limit]
        for p in old:
            if p.terminated_at is None:
                p.terminated_at = now
                logger.warning("query %s ran past %.0f s; terminating it", p.client_id, limit)
                self._send_action(child, "terminate", terminateId=p.key)
            elif now - p.terminated_at > TERMINATE_GRACE_S:
                self._fail_pending(lambda q, p=p: q is p, f"no final response within {limit:.0f} s")

    def _handle_death(self, child: KataGoChild, cause: str) -> None:
        child.stop(5.0)  # drains stdout: responses written before the exit are still delivered
        tail = child.tail()
        with self._lock:
            self._child = None
            self._last_stderr, self._last_exit = tail, cause
            if self._state == "running":
                self._state = "restarting"
            twice: list[Pending] = []
            for p in list(self._pending.values()):
                if p.sent_gen != child.gen:
                    continue
                if p.action:
                    del self._pending[p.key]
                    p.done.set()
                elif p.resent:
                    twice.append(p)
                else:
                    p.resent, p.sent_gen = True, None
                    p.prepare_resend()
                    self._counters["resent"] += 1
        logger.error("%s; last stderr lines: %s", cause, " | ".join(tail[-5:]))
        ids = {id(p) for p in twice}
        self._fail_pending(
            lambda p: id(p) in ids, f"{cause}; the query had already been re-sent once after a restart"
        )
        self._restart(cause)

    def _restart(self, cause: str) -> None:
        failures = 0
        while not self._stop.is_set():
            now = time.monotonic()
            window, budget = self.settings.restart_window_s, self.settings.restart_budget
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
            with self._lock:
                self._counters["restarts"] += 1
            try:
                child = self._spawn_ready()
            except EngineError as exc:
                cause, failures = str(exc), failures + 1
                logger.error("KataGo restart failed: %s", exc)
                continue
            with self._lock:
                if self._state != "restarting":  # closed meanwhile
                    to_send: list[Pending] = []
                else:
                    self._child, self._state = child, "running"
                    to_send = [p for p in self._pending.values() if p.sent_gen is None and not p.action]
                    for p in to_send:
                        p.sent_gen = child.gen
            if self._child is not child:
                child.stop(2.0)
                return
            logger.info("KataGo restarted after: %s; re-sending %d queries", cause, len(to_send))
            for p in to_send:
                child.write(p.query)
            return

    def _give_up(self, message: str) -> None:
        logger.error("KataGo engine failed: %s", message)
        with self._lock:
            self._state, self._failure = "failed", message
        self._fail_pending(lambda p: True, "KataGo engine failed: " + message)

    # ------------------------------------------------------------------------------ helpers
    def _unavailable_message(self) -> str:
        if self._state == "failed":
            return "KataGo engine failed: " + self._failure
        return "KataGo engine is " + (
            "stopping" if self._draining and self._state != "stopped" else self._state
        )

    def _forget(self, gen: int) -> None:
        """Drop the start-up actions of a child that never became current."""
        with self._lock:
            for p in [p for p in self._pending.values() if p.sent_gen == gen and p.action]:
                del self._pending[p.key]

    def _has_work(self) -> bool:
        with self._lock:
            return any(not p.action for p in self._pending.values())

    def _busy(self, gen: int) -> bool:
        with self._lock:
            return any(p.sent_gen == gen for p in self._pending.values())

    def _fail_pending(self, which: Any, message: str) -> None:
        with self._lock:
            doomed = [p for p in self._pending.values() if which(p)]
            for p in doomed:
                del self._pending[p.key]
                p.done.set()
                if not p.action:
                    self._counters["failed"] += 1
        for p in doomed:
            if p.emit is not None:
                _safe_emit(p.emit, {"id": p.client_id, "error": message})

    def _terminate_one(self, p: Pending, turns: list[int] | None) -> None:
        with self._lock:
            gen, child = p.sent_gen, self._child
        if gen is None:  # waiting for a restarted child: answer like KataGo does for unstarted work
            self._drop_waiting(turns, only=p)
        elif child is not None and child.gen == gen:
            extra: dict[str, Any] = {} if turns is None else {"turnNumbers": turns}
            self._send_action(child, "terminate", terminateId=p.key, **extra)

    def _drop_waiting(self, turns: list[int] | None, only: Pending | None = None) -> None:
        out: list[tuple[Emit | None, Response]] = []
        with self._lock:
            for p in list(self._pending.values()):
                if p.action or p.sent_gen is not None or (only is not None and p is not only):
                    continue
                dropped = sorted(p.turns if turns is None else p.turns & set(turns))
                p.turns -= set(dropped)
                p.prepare_resend()
                out += [
                    (p.emit, {"id": p.client_id, "turnNumber": t, "isDuringSearch": False, "noResults": True})
                    for t in dropped
                ]
                if not p.turns:
                    del self._pending[p.key]
                    self._counters["completed"] += 1
        for emit, resp in out:
            if emit is not None:
                _safe_emit(emit, resp)


def _cause(tail: list[str]) -> str:
    """KataGo's own explanation: the exception text (``what(): ...``) or the last error line."""
    for line in reversed(tail):
        if "what():" in line:
            return line.split("what():", 1)[1].strip()
    for line in reversed(tail):
        if "error" in line.lower():
            return line.strip()
    return tail[-1].strip() if tail else "no output on stderr"


def _safe_emit(emit: Emit, resp: Response) -> None:
    try:
        emit(resp)
    except Exception:  # a broken transport must not take the reader thread down
        logger.exception("emit failed for a KataGo response (id %s)", resp.get("id"))


def engine_from_settings(
    settings: KataGoSettings, model: Path | str, cache_dir: Path | None = None
) -> KataGoEngine:
    """The daemon's way in: find the binary as ``settings`` say, then build and start the engine.

    ``cache_dir`` (the agent's cache folder) is used when ``settings.cache_dir`` is unset.
    """
    if settings.cache_dir is None and cache_dir is not None:
        settings = settings.model_copy(update={"cache_dir": cache_dir})
    binary = find_katago(settings.binary, settings.resolved_cache_dir(), download=settings.download)
    return KataGoEngine(binary, Path(model), settings).start()


KataGoProcessEngine = KataGoEngine  # the name agent.commands.analysis looks up
