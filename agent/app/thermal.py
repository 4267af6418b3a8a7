"""Thermal guard: keep a hot device useful, and stop it before it cooks itself.

The guard reads the profile's thermal zones (``[thermal] zones``, globs over the zone type; the
hottest matching zone counts) and moves between four states:

===========  ==============================  ==========================================
state        entered when                     effect
===========  ==============================  ==========================================
``unknown``  no matching zone can be read    none (reported in health as absent data)
``normal``   below the soft limit            the profile's threads and visit cap
``soft``     at or above ``soft_limit_c``    ``reduced_threads`` / ``reduced_max_visits``
``hard``     at or above ``hard_limit_c``    reduced, and new work is refused with
                                             ``agent.errors.ThermalLimit``
===========  ==============================  ==========================================

Leaving a state needs the temperature to drop ``hysteresis_c`` below the limit that was crossed
(hard: below ``hard - hysteresis``; soft: below ``soft - hysteresis``), so a device hovering at
a limit does not flap. A Pi's firmware starts its own throttling at 80 °C (85 °C on the Pi 5's
hard cap), which is why the Pi profiles use 75/82 °C: we shed load before the firmware does.

``check()`` reads the zones once and updates the state; ``start()`` runs it on a named
background thread (``thermal-guard``) every ``interval_s`` seconds until ``stop()``. Engines call
``ensure_can_start()`` before accepting a query and ``limits()`` for threads and visit cap.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ThermalLimit
from agent.hardware.thermal_zones import probe_thermal_zones, select_zones
from agent.profiles import Profile, ThermalSettings

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5.0


class ThermalState(enum.StrEnum):
    UNKNOWN = "unknown"
    NORMAL = "normal"
    SOFT = "soft"
    HARD = "hard"


@dataclass(frozen=True)
class ThermalStatus:
    state: ThermalState
    temperature_c: float | None
    zone: str | None
    soft_limit_c: float
    hard_limit_c: float
    hysteresis_c: float
    threads: int  # search threads recommended now
    max_visits: int  # visit cap now
    checked_at: float
    message: str

    @property
    def refusing(self) -> bool:
        return self.state is ThermalState.HARD

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "temperature_c": self.temperature_c,
            "zone": self.zone,
            "soft_limit_c": self.soft_limit_c,
            "hard_limit_c": self.hard_limit_c,
            "hysteresis_c": self.hysteresis_c,
            "threads": self.threads,
            "max_visits": self.max_visits,
            "refusing_work": self.refusing,
            "checked_at": self.checked_at,
            "message": self.message,
        }


def next_state(current: ThermalState, temp: float | None, settings: ThermalSettings) -> ThermalState:
    """The state after reading ``temp`` while in ``current`` (hysteresis on the way down)."""
    if temp is None:
        return ThermalState.UNKNOWN
    soft, hard, hyst = settings.soft_limit_c, settings.hard_limit_c, settings.hysteresis_c
    if temp >= hard:
        return ThermalState.HARD
    if current is ThermalState.HARD and temp >= hard - hyst:
        return ThermalState.HARD
    if temp >= soft:
        return ThermalState.SOFT
    if current in (ThermalState.HARD, ThermalState.SOFT) and temp >= soft - hyst:
        return ThermalState.SOFT
    return ThermalState.NORMAL


class ThermalGuard:
    """Watches temperatures against a profile's limits; see the module docstring."""

    def __init__(
        self,
        settings: ThermalSettings,
        *,
        threads: int,
        max_visits: int,
        root: Path = Path("/"),
        interval_s: float = DEFAULT_INTERVAL_S,
        on_change: Callable[[ThermalStatus], None] | None = None,
    ) -> None:
        self.settings = settings
        self.root = Path(root)
        self.interval_s = interval_s
        self._full = (threads, max_visits)
        self._reduced = (
            min(threads, settings.reduced_threads or max(1, threads // 2)),
            min(max_visits, settings.reduced_max_visits or max(1, max_visits // 4)),
        )
        self._on_change = on_change
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = self._make_status(ThermalState.UNKNOWN, None, None)

    @classmethod
    def from_profile(cls, profile: Profile, *, root: Path = Path("/"), **kwargs: Any) -> ThermalGuard:
        return cls(
            profile.thermal,
            threads=profile.search.threads,
            max_visits=profile.search.max_visits,
            root=root,
            **kwargs,
        )

    # --- reading ---------------------------------------------------------------------------------

    def read_temperature(self) -> tuple[float | None, str | None]:
        """The hottest readable zone among the profile's zones: (°C, zone type), or (None, None)."""
        zones = [
            z
            for z in select_zones(probe_thermal_zones(self.root), self.settings.zones)
            if z.temp_c is not None
        ]
        if not zones:
            return None, None
        hottest = max(zones, key=lambda z: z.temp_c or 0.0)
        return hottest.temp_c, hottest.name

    def _make_status(self, state: ThermalState, temp: float | None, zone: str | None) -> ThermalStatus:
        s = self.settings
        threads, visits = (
            self._full if state in (ThermalState.NORMAL, ThermalState.UNKNOWN) else self._reduced
        )
        where = f"{temp:.1f} °C ({zone})" if temp is not None else "unknown"
        if state is ThermalState.HARD:
            message = (
                f"device at {where} is above its hard thermal limit {s.hard_limit_c:.1f} °C; refusing new "
                f"work until it cools below {s.hard_limit_c - s.hysteresis_c:.1f} °C"
            )
        elif state is ThermalState.SOFT:
            message = (
                f"device at {where} is above its soft thermal limit {s.soft_limit_c:.1f} °C; search reduced "
                f"to {threads} threads and {visits} visits"
            )
        elif state is ThermalState.NORMAL:
            message = f"device at {where}, below its soft limit {s.soft_limit_c:.1f} °C"
        else:
            message = "no readable thermal zone matches " + (", ".join(s.zones) or "any zone")
        return ThermalStatus(
            state=state,
            temperature_c=temp,
            zone=zone,
            soft_limit_c=s.soft_limit_c,
            hard_limit_c=s.hard_limit_c,
            hysteresis_c=s.hysteresis_c,
            threads=threads,
            max_visits=visits,
            checked_at=time.time(),
            message=message,
        )

    def check(self) -> ThermalStatus:
        """Read the zones now and update the state; returns the new status."""
        temp, zone = self.read_temperature()
        with self._lock:
            previous = self._status.state
            state = next_state(previous, temp, self.settings)
            self._status = status = self._make_status(state, temp, zone)
        if state is not previous:
            if state in (ThermalState.SOFT, ThermalState.HARD):
                log = logger.warning
            else:  # cooling down is news; the first reading after start is not
                log = logger.debug if previous is ThermalState.UNKNOWN else logger.info
            log("thermal state %s -> %s: %s", previous.value, state.value, status.message)
            if self._on_change is not None:
                self._on_change(status)
        return status

    # --- what engines use ------------------------------------------------------------------------

    @property
    def status(self) -> ThermalStatus:
        with self._lock:
            return self._status

    def limits(self) -> tuple[int, int]:
        """(search threads, visit cap) to use now."""
        status = self.status
        return status.threads, status.max_visits

    def ensure_can_start(self) -> None:
        """Raise ``ThermalLimit`` while the device is above its hard limit (until it cools)."""
        status = self.status
        if status.refusing:
            raise ThermalLimit(status.message)

    # --- background thread -----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self.check()
        self._thread = threading.Thread(target=self._run, name="thermal-guard", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except OSError as exc:  # a zone vanishing mid-read; the next round tries again
                logger.warning("thermal check failed: %s", exc)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> ThermalGuard:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
