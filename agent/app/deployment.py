"""The device side of a fleet rollout: desired network in, the swapped engine out, each step visible.

The MQTT transport hands every retained desired-state message (``agent.app.desired``) to
:meth:`Deployer.offer`; a named thread works on the newest one. Each deployment id is acted on
once (the broker re-sends the retained message on every connect), through these states::

    pending ─► downloading ─► verifying ─► preparing ─► active
       │            │              │            │
       └────────────┴──────────────┴────────────┴──────► failed      (the old network keeps serving)
    active ─► rolled_back                                            (a later rollback undid it)

- **downloading**: to ``<model_store>/<network>.part``, resumed after an interruption, never
  beyond ``max_bytes`` (the desired ``size``, or the agent's limit); skipped when the device
  already keeps a file with that sha256 (its current or previous network). An ``mqtt:`` url is
  fetched as chunks over the daemon's own MQTT connection (``agent.app.mqtt_download``).
- **verifying**: the sha256 of the whole file, before anything reads it; a mismatch deletes it.
- **preparing**: the daemon builds the engine for the device's own profile through the model
  store (conversion + verification, cached by hash), self-tests it with one query, and only then
  swaps it in (``Daemon.swap_network``): queries running finish on the old engine, new ones go to
  the new one. A network that will not read, convert, verify or answer never replaces the one
  serving; one that serves only a fallback where the old one served the first choice is refused.
- **active**: the previous network is kept for a rollback (``action: rollback``).

The state (``<state_dir>/deployment.json``: current and previous network, the deployment in hand,
the ids done) is written atomically before and after each step. A daemon killed in the middle
starts on ``current`` (the old network: nothing half-written is loaded, the model store writes
atomically too), reports the interrupted step, and resumes it when the retained desired state
arrives again. Every step is logged, goes into health and status (``deployment``), and is
published on ``<p>/<device>/deployment/events``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.app.config import AgentConfig
from agent.app.desired import Desired, parse_desired
from agent.app.download import check_and_place, download, part_path, sha256_of
from agent.app.mqtt_download import Link, mqtt_download
from agent.errors import AgentError, DeploymentError
from agent.fsutil import atomic_write_text, sha256_file

logger = logging.getLogger(__name__)

STATES = ("pending", "downloading", "verifying", "preparing", "active", "failed", "rolled_back")
TERMINAL = frozenset({"active", "failed", "rolled_back"})
MAX_NETWORK_BYTES = 2 << 30
DONE_KEPT = 200  # deployment ids remembered as done
PROGRESS_EVERY_S = 1.0

Swap = Callable[[AgentConfig], None]
Announce = Callable[[dict[str, Any]], None]


def _installed(
    name: str, file: Path, sha256: str, deployment: str | None, overrides: dict[str, Any]
) -> dict[str, Any]:
    return {
        "network": name,
        "file": str(file),
        "sha256": sha256,
        "deployment": deployment,
        "overrides": overrides,
    }


class Deployer:
    """Acts on desired-state messages for one daemon; ``swap(config)`` prepares and swaps."""

    def __init__(self, state_dir: Path, store_dir: Path, max_bytes: int = MAX_NETWORK_BYTES) -> None:
        self.path = state_dir / "deployment.json"
        self.store_dir = store_dir
        self.max_bytes = max_bytes
        self.swap: Swap | None = None
        self.announce: Announce | None = None
        self.link: Link | None = None  # the daemon's MQTT connection, for mqtt: transfers
        self.refused = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._next: Desired | None = None
        self._thread: threading.Thread | None = None
        self._last_progress = 0.0
        self._base: AgentConfig | None = None
        self.state: dict[str, Any] = self._load()

    # -- persisted state ----------------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        empty: dict[str, Any] = {"current": None, "previous": None, "deployment": None, "done": []}
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return empty
        except (OSError, ValueError) as exc:
            logger.error(
                "deployment: unreadable %s (%s); starting without deployment history", self.path, exc
            )
            return empty
        return {**empty, **doc} if isinstance(doc, dict) else empty

    def _save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.state, indent=1) + "\n", mode=0o640)

    def effective(self, config: AgentConfig) -> AgentConfig:
        """``config`` with the network a deployment made current (if its file is still there).

        ``config`` (the file's, at start-up and on each reload) is also the base each later
        deployment's network and runtime override are applied to."""
        self._base = config
        current = self.state.get("current")
        if not current:
            return config
        file = Path(current["file"])
        if not file.is_file():
            logger.error("deployment: the deployed network %s is gone; serving the configured one", file)
            return config
        overrides = {**config.overrides, **current.get("overrides", {})}
        return config.model_copy(update={"model": str(file), "overrides": overrides})

    def start(
        self,
        config: AgentConfig,
        source: Path | None,
        swap: Swap,
        announce: Announce,
        link: Link | None = None,
    ) -> None:
        """Record what serves now (``source``: the network file of the configured model, on a first
        start) and start the worker; ``link`` gives the MQTT connection for ``mqtt:`` transfers."""
        self.swap, self.announce, self.link = swap, announce, link
        if self._base is None:
            self._base = config
        if not self.state.get("current") and source is not None and source.is_file():
            self.state["current"] = _installed(source.name, source, sha256_file(source), None, {})
            self._save()
        dep = self.state.get("deployment")
        if dep and dep.get("state") not in TERMINAL:
            logger.warning(
                "deployment %s was interrupted while %s (the agent stopped); serving %s, and resuming "
                "it when its desired state arrives",
                dep.get("id"),
                dep.get("state"),
                (self.state.get("current") or {}).get("network"),
            )
            dep["interrupted"] = dep.get("state")
        self._thread = threading.Thread(target=self._loop, name="deployment", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5.0)

    # -- reports ------------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """The ``deployment`` object of health and status."""
        with self._lock:
            dep = dict(self.state.get("deployment") or {})
            current, previous = self.state.get("current"), self.state.get("previous")
        out: dict[str, Any] = {
            "id": dep.get("id"),
            "state": dep.get("state"),
            "progress": dep.get("progress"),
            "error": dep.get("error"),
            "network": dep.get("network"),
            "sha256": dep.get("sha256"),
            "updated": dep.get("updated"),
            "current": {k: current[k] for k in ("network", "sha256", "deployment")} if current else None,
            "previous": {k: previous[k] for k in ("network", "sha256", "deployment")} if previous else None,
            "refused": self.refused,
        }
        for key in ("interrupted", "rollback_of", "rolled_back_by"):
            if key in dep:
                out[key] = dep[key]
        return out

    # -- intake (paho's thread: queue only) ---------------------------------------------------------
    def offer(self, payload: bytes) -> None:
        try:
            desired = parse_desired(payload)
        except DeploymentError as exc:
            self.refused += 1
            logger.warning("deployment: ignoring a desired-state message: %s", exc)
            return
        if desired is None:
            return  # cleared by the operator: nothing to do
        with self._lock:
            self._next = desired
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                desired, self._next = self._next, None
            if desired is None or self._stop.is_set():
                continue
            if desired.id in self.state["done"]:
                logger.debug("deployment %s already done; ignoring its retained message", desired.id)
                continue
            try:
                self._run(desired)
            except AgentError as exc:
                self._fail(desired, str(exc))
            except Exception as exc:  # a bug must not kill the worker; the daemon keeps serving
                logger.exception("deployment %s: unexpected failure", desired.id)
                self._fail(desired, f"internal error: {exc}")

    # -- the steps ----------------------------------------------------------------------------------
    def _set(
        self,
        desired: Desired,
        state: str,
        progress: float | None = None,
        error: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        dep = {
            "id": desired.id,
            "state": state,
            "progress": None if progress is None else round(progress, 3),
            "error": error,
            "network": desired.network,
            "sha256": desired.sha256,
            "updated": round(time.time(), 3),
        }
        if desired.rollback_of:
            dep["rollback_of"] = desired.rollback_of
        dep.update(extra or {})
        with self._lock:
            self.state["deployment"] = dep
            if state in TERMINAL:
                self.state["done"] = [*self.state["done"], desired.id][-DONE_KEPT:]
        self._save()
        if state != "downloading" or progress in (0.0, 1.0):
            log = logger.error if state == "failed" else logger.info
            log("deployment %s (%s): %s%s", desired.id, desired.network, state, f": {error}" if error else "")
        if self.announce is not None:
            event = {k: dep[k] for k in ("state", "progress", "error", "network", "sha256")}
            self.announce({"deployment": desired.id, "ts": dep["updated"], **event, **(extra or {})})

    def _fail(self, desired: Desired, error: str) -> None:
        self._set(desired, "failed", error=error)

    def _local_copy(self, sha256: str) -> dict[str, Any] | None:
        for key in ("current", "previous"):
            entry = self.state.get(key)
            if entry and entry["sha256"] == sha256 and Path(entry["file"]).is_file():
                return dict(entry)
        return None

    def _target(self, desired: Desired) -> Path:
        target = self.store_dir / desired.network
        if target.exists() and sha256_file(target) != desired.sha256:
            target = self.store_dir / f"{desired.sha256[:12]}-{desired.network}"
        return target

    def _run(self, desired: Desired) -> None:
        self._set(desired, "pending")
        overrides = desired.overrides()
        local = self._local_copy(desired.sha256)
        if desired.action == "rollback" and local is not None and desired.runtime is None:
            overrides = local.get("overrides", {})  # back to the network as it served then
        current = self.state.get("current")
        if current and current["sha256"] == desired.sha256 and current.get("overrides", {}) == overrides:
            self._finish(desired)  # serving it already
            return
        if local is not None:
            file = Path(local["file"])
            self._set(desired, "verifying")
            if sha256_of(file, self._stop) != desired.sha256:
                raise DeploymentError(f"the kept copy {file} no longer has sha256 {desired.sha256}")
        elif desired.url is None:
            raise DeploymentError(f"no local network with sha256 {desired.sha256} and no url to fetch it")
        else:
            file = self._fetch(desired)
        self._set(desired, "preparing")
        assert self._base is not None
        config = self._base.model_copy(
            update={"model": str(file), "overrides": {**self._base.overrides, **overrides}}
        )
        assert self.swap is not None
        try:
            self.swap(config)  # raises (AgentError) and keeps the old engine unless the new one answers
        except AgentError:
            if local is None:  # a file that cannot serve is not kept (a kept copy served before)
                file.unlink(missing_ok=True)
            raise
        with self._lock:
            if not (current and current["sha256"] == desired.sha256):
                self.state["previous"] = current
            self.state["current"] = _installed(desired.network, file, desired.sha256, desired.id, overrides)
        self._finish(desired)

    def _fetch(self, desired: Desired) -> Path:
        assert desired.url is not None
        target = self._target(desired)
        if target.is_file():
            self._set(desired, "verifying")
            if sha256_of(target, self._stop) == desired.sha256:
                return target  # downloaded before an interruption, already checked and placed
        self._set(desired, "downloading", progress=0.0)

        def progress(done: int, total: int | None) -> None:
            now = time.monotonic()
            if total and now - self._last_progress >= PROGRESS_EVERY_S:
                self._last_progress = now
                self._set(desired, "downloading", progress=min(done / total, 0.999))

        if desired.url.startswith("mqtt:"):
            assert self._base is not None
            part = mqtt_download(
                desired.url,
                target,
                link=self.link or (lambda: None),
                prefix=self._base.mqtt.topic_prefix,
                sha256=desired.sha256,
                max_bytes=self.max_bytes,
                progress=progress,
                stop=self._stop,
                size=desired.size,
            )
        else:
            part = download(
                desired.url,
                target,
                max_bytes=self.max_bytes,
                progress=progress,
                stop=self._stop,
                size=desired.size,
            )
        self._set(desired, "downloading", progress=1.0)
        self._set(desired, "verifying")
        try:
            return check_and_place(part, target, desired.sha256, self._stop)
        finally:
            if desired.size is None:
                part_path(target).unlink(missing_ok=True)

    def _finish(self, desired: Desired) -> None:
        """``active``; for a rollback, the deployment it undid becomes ``rolled_back``."""
        if not desired.rollback_of:
            self._set(desired, "active", progress=1.0)
            return
        with self._lock:
            self.state["done"] = [*self.state["done"], desired.id][-DONE_KEPT:]
        undone = Desired(id=desired.rollback_of, sha256=desired.sha256, network=desired.network)
        self._set(undone, "rolled_back", progress=1.0, extra={"rolled_back_by": desired.id})
