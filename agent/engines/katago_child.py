"""One ``katago analysis`` process: its pipes, reader threads and stderr tail.

``KataGoChild`` owns the pipes, each served by a named thread: a writer for stdin (one JSON
object per line, fed through a queue, so no caller ever blocks on a child that stopped reading;
the supervisor must stay free to kill it), a reader for stdout (each line decoded and handed to
the engine's router) and one for stderr (each line logged under
``agent.engines.katago_child.stderr`` and kept in a bounded tail for error messages). It never
restarts anything itself; ``KataGoEngine`` decides that.

The child dies with the agent: on Linux it is started with ``PR_SET_PDEATHSIG`` = SIGKILL, so a
``kill -9`` of the agent (which runs no clean-up) takes KataGo with it at once instead of leaving
it computing for seconds. The signal follows the *thread* that started the child, and every
spawn happens on a thread that lives as long as the engine (the caller of ``start`` or the
supervisor); were it to end early, the child would die and be restarted by the supervisor.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.errors import EngineError

logger = logging.getLogger(__name__)
stderr_logger = logging.getLogger(__name__ + ".stderr")

_LOUD = ("error", "exception", "what()", "warning", "failed")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when its parent dies (Linux), or None.

    ``prctl`` is looked up before the fork; in the child the function only calls it and checks
    that the parent did not die in between (then the signal would never come)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return set_signal


class KataGoChild:
    """A running ``katago analysis`` process with its reader threads."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        gen: int,
        on_line: Callable[[KataGoChild, dict[str, Any]], None],
        tail_lines: int,
    ) -> None:
        self.proc = proc
        self.gen = gen
        self.last_output = time.monotonic()
        self.exited = threading.Event()
        self._on_line = on_line
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._threads = [
            threading.Thread(target=self._write_stdin, name=f"katago-stdin-{gen}", daemon=True),
            threading.Thread(target=self._read_stdout, name=f"katago-stdout-{gen}", daemon=True),
            threading.Thread(target=self._read_stderr, name=f"katago-stderr-{gen}", daemon=True),
        ]
        for t in self._threads:
            t.start()

    @classmethod
    def spawn(
        cls,
        cmd: list[str],
        env: dict[str, str],
        gen: int,
        on_line: Callable[[KataGoChild, dict[str, Any]], None],
        tail_lines: int = 40,
    ) -> KataGoChild:
        logger.info("starting KataGo: %s", " ".join(cmd))
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # a Ctrl-C meant for the agent does not hit KataGo first
                preexec_fn=die_with_parent(),  # only prctl runs between fork and exec
            )
        except OSError as exc:
            raise EngineError(f"cannot start KataGo ({cmd[0]}): {exc}") from exc
        return cls(proc, gen, on_line, tail_lines)

    # ---------------------------------------------------------------------------------- I/O
    def write(self, obj: dict[str, Any]) -> None:
        """Queue one JSON line for the child (never blocks; lost if the child dies first)."""
        self._outbox.put((json.dumps(obj, separators=(",", ":")) + "\n").encode())

    def _write_stdin(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            while (data := self._outbox.get()) is not None:
                stdin.write(data)
                stdin.flush()
        except (OSError, ValueError) as exc:  # the child is gone; the supervisor handles that
            logger.debug("write to KataGo pid %d failed: %s", self.proc.pid, exc)
        finally:
            with contextlib.suppress(OSError):
                stdin.close()  # KataGo quits at EOF (-quit-without-waiting: without finishing work)

    def _read_stdout(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            for raw in stdout:
                self.last_output = time.monotonic()
                try:
                    obj = json.loads(raw)
                except ValueError:
                    logger.warning("KataGo wrote a line that is not JSON: %r", raw[:200])
                    continue
                if isinstance(obj, dict):
                    self._on_line(self, obj)
        except Exception:
            logger.exception("KataGo stdout reader (pid %d) stopped", self.proc.pid)
        finally:
            self.exited.set()

    def _read_stderr(self) -> None:
        stderr = self.proc.stderr
        assert stderr is not None
        for raw in stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            self._tail.append(line)
            loud = any(word in line.lower() for word in _LOUD)
            stderr_logger.log(
                logging.WARNING if loud else logging.INFO, "katago[%d]: %s", self.proc.pid, line
            )

    # ---------------------------------------------------------------------------------- control
    def tail(self) -> list[str]:
        return list(self._tail)

    def alive(self) -> bool:
        return self.proc.poll() is None and not self.exited.is_set()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def stop(self, timeout: float) -> None:
        """Close stdin (KataGo quits), wait up to ``timeout``, kill if needed, drain the readers."""
        self._outbox.put(None)  # the writer flushes what is queued, then closes stdin
        try:
            self.proc.wait(timeout=max(0.1, timeout))
        except subprocess.TimeoutExpired:
            logger.warning("KataGo pid %d did not quit within %.1f s; killing it", self.proc.pid, timeout)
            self.kill()
            try:
                self.proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                logger.error("KataGo pid %d survived SIGKILL for 5 s", self.proc.pid)
        for t in self._threads:
            t.join(timeout=5.0)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
