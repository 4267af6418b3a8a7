"""One progress display for long work (network preparation, conversion, benchmarks).

A job reports its stages through a *progress factory*: ``progress(description, total)`` is a
context manager yielding ``step(done, total)``; ``total = 0`` is a stage without a count (the
TensorFlow step, an ONNX graph build). :class:`ProgressDisplay` is that factory:

* on a terminal, one rich display for the whole job: each stage a line with its bar, its count and
  its time, kept on screen when done; log records printed while it is shown go *above* it (the
  job's logging handlers are pointed at rich's stderr proxy for that time), so a log line never
  glues onto a bar;
* elsewhere (the journal, a pipe, CI), plain log lines: a stage's start, its count every tenth of
  the way, and its end with the time it took.

``NO_PROGRESS`` reports nothing (tests, callers that print their own)::

    with ProgressDisplay("preparing b6c96 onnx int8") as progress:
        run_conversion(job, progress)
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import Any, TextIO

logger = logging.getLogger(__name__)

StepFn = Callable[[int, int], None]
ProgressFactory = Callable[[str, int], AbstractContextManager[StepFn]]


@contextmanager
def _silent(_description: str, _total: int) -> Iterator[StepFn]:
    yield lambda _done, _total: None


NO_PROGRESS: ProgressFactory = _silent


class ProgressDisplay:
    """A progress factory that shows every stage of one job (module docstring)."""

    def __init__(self, title: str, *, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.title = title
        self._stream = stream or sys.stderr
        self.tty = self._stream.isatty() if tty is None else tty
        self._live: Any = None  # rich.progress.Progress while shown on a terminal
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []
        self._started = 0.0

    # -- the job ----------------------------------------------------------------------------------------
    def __enter__(self) -> ProgressDisplay:
        self._started = time.monotonic()
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            console = Console(file=self._stream, stderr=self._stream is sys.stderr, force_terminal=True)
            self._live = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                redirect_stderr=True,
                redirect_stdout=False,
            )
            self._live.start()
            self._live.console.print(self.title, markup=False, highlight=False)
            self._redirect_logging()
        else:
            logger.info("%s", self.title)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._restore_logging()
            self._live.stop()
            self._live = None
        if exc is None:
            logger.info("%s: done in %.1f s", self.title, time.monotonic() - self._started)

    def _redirect_logging(self) -> None:
        # While rich shows the display, sys.stderr is its proxy: records written there are printed
        # above the bars instead of onto them.
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self._stream:
                self._handlers.append((handler, handler.stream))
                handler.setStream(sys.stderr)

    def _restore_logging(self) -> None:
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers.clear()

    # -- one stage ----------------------------------------------------------------------------------------
    def __call__(self, description: str, total: int) -> AbstractContextManager[StepFn]:
        return self._stage(description, total)

    @contextmanager
    def _stage(self, description: str, total: int) -> Iterator[StepFn]:
        started = time.monotonic()
        if self._live is not None:
            live = self._live
            task = live.add_task(description, total=total or None)

            def step(done: int, tot: int) -> None:
                live.update(task, completed=done, total=tot or None)

            try:
                yield step
            finally:
                live.update(task, completed=live.tasks[task].total or 1, total=live.tasks[task].total or 1)
                live.stop_task(task)
            return
        logger.info("%s ...", description)
        last = [0]  # the last tenth of the way logged

        def log_step(done: int, tot: int) -> None:
            tenth = done * 10 // tot if tot > 0 else 0
            if tenth > last[0]:
                last[0] = tenth
                logger.info("%s: %d/%d", description, done, tot)

        yield log_step
        logger.info("%s: done in %.1f s", description, time.monotonic() - started)
