"""systemd's notification protocol (sd_notify(3)) for ``katago-edge serve``.

With ``Type=notify`` systemd counts the service as started only when it receives ``READY=1``;
the daemon sends it after the engine has answered a real query, so ``systemctl start`` (and
``install.sh``, which waits on it) returns when analysis actually works. ``STATUS=`` lines show
up in ``systemctl status``. With ``WatchdogSec=`` systemd exports ``WATCHDOG_USEC`` (and
``WATCHDOG_PID``); the daemon must send ``WATCHDOG=1`` more often than that, and sd_watchdog_enabled(3)
recommends every half period. The pings come from the serving loop after it has checked the
engine, so a hung engine stops the pings and systemd restarts the service (SIGABRT, then
``Restart=on-failure``).

Messages go through the ``sdnotify`` package, a datagram to ``$NOTIFY_SOCKET`` (a leading ``@``
is the abstract namespace). Without ``NOTIFY_SOCKET`` (run by hand, in a container) every call
is a no-op.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

logger = logging.getLogger(__name__)


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None when off.

    ``WATCHDOG_PID``, when set, must be our pid: a child that inherited the environment must not
    ping on behalf of its parent.
    """
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    return int(usec) / 2e6


class Notifier:
    """Sends sd_notify messages; remembers what it sent (for health and tests)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self.watchdog_every = watchdog_interval(env, os.getpid())
        self._last_ping = 0.0
        self._last_status = ""
        self._sender = None
        if self.enabled:
            import sdnotify

            self._sender = sdnotify.SystemdNotifier()
            if self._sender.socket is None:
                logger.warning(
                    "NOTIFY_SOCKET=%s cannot be reached; systemd will not see READY", env["NOTIFY_SOCKET"]
                )

    def send(self, message: str) -> None:
        if self._sender is not None:
            self._sender.notify(message)

    def status(self, text: str) -> None:
        """``STATUS=`` line; repeated identical texts are sent once."""
        if text != self._last_status:
            self._last_status = text
            logger.info("status: %s", text)
            self.send(f"STATUS={text}")

    def ready(self, text: str) -> None:
        self._last_status = text
        self.send(f"READY=1\nSTATUS={text}")

    def stopping(self, text: str = "stopping") -> None:
        self._last_status = text
        self.send(f"STOPPING=1\nSTATUS={text}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets newer systemd (253+) match the reload; older ones ignore it
        self.send(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def watchdog_due(self, now: float) -> bool:
        return self.watchdog_every is not None and now - self._last_ping >= self.watchdog_every

    def ping(self, now: float) -> None:
        self._last_ping = now
        self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for more start/stop time (converting a network on a Pi takes minutes)."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")
