"""stdin/stdout transport: ``katago analysis``'s own wire format.

One JSON object per line in, one per line out; responses may be written from engine threads at
any time, so every write takes a lock and flushes (KaTrain reads line by line). The reader runs
in the calling thread: when stdin closes, the service finishes all queued work (like KataGo)
unless ``quit_without_waiting`` is set, in which case open queries are terminated first (they
still get their final ``isDuringSearch: false`` response) and the transport returns promptly.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from typing import Any, BinaryIO

from agent.protocol.service import AnalysisService

logger = logging.getLogger(__name__)


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def encode_line(response: dict[str, Any]) -> str:
    """Compact JSON; NaN/inf (never valid JSON) become null instead of breaking the stream."""
    try:
        return json.dumps(response, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(response), separators=(",", ":"), allow_nan=False)


class StdioTransport:
    def __init__(
        self,
        service: AnalysisService,
        stdin: BinaryIO,
        stdout: BinaryIO,
        *,
        quit_without_waiting: bool = False,
        close_timeout: float = 1e9,
    ) -> None:
        self.service = service
        self.stdin = stdin
        self.stdout = stdout
        self.quit_without_waiting = quit_without_waiting
        self.close_timeout = close_timeout
        self._write_lock = threading.Lock()
        self._broken = False
        self.lines_in = 0
        self.lines_out = 0

    def emit(self, response: dict[str, Any]) -> None:
        data = (encode_line(response) + "\n").encode("utf-8")
        with self._write_lock:
            if self._broken:
                return
            try:
                self.stdout.write(data)
                self.stdout.flush()
                self.lines_out += 1
            except (BrokenPipeError, ValueError, OSError) as exc:
                self._broken = True
                logger.warning("stdout closed (%s); dropping further responses", exc)

    def serve(self) -> int:
        """Read until EOF, then shut down. Returns a process exit code."""
        for raw in iter(self.stdin.readline, b""):
            self.lines_in += 1
            self.service.handle_line(raw, self.emit)
        logger.info(
            "stdin closed after %d lines; %s",
            self.lines_in,
            "terminating open queries" if self.quit_without_waiting else "finishing queued work",
        )
        if self.quit_without_waiting:
            self.service.engine.terminate_all()
            self.service.close(timeout=10.0)
        else:
            self.service.close(timeout=self.close_timeout)
        return 0
