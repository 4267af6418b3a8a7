"""One progress display: rich on a terminal with log lines printed above the bars (never glued
onto one), plain log lines elsewhere."""

from __future__ import annotations

import io
import logging
import re
import time

import pytest

from agent.progress import ProgressDisplay


def test_progress__on_a_terminal_log_lines_stay_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    monkeypatch.setattr("sys.stderr", screen)  # the terminal the handler and rich both write to
    handler = logging.StreamHandler(screen)
    root = logging.getLogger()
    saved = root.handlers[:]  # earlier tests' handlers (some on closed streams) stay out of it
    root.handlers = [handler]
    log = logging.getLogger("test.progress")
    try:
        with ProgressDisplay("preparing b6c96", stream=screen, tty=True) as progress:
            with progress("calibrating", 10) as step:
                for i in range(1, 11):
                    step(i, 10)
                    if i == 5:
                        # rich has drawn the bar (its refresh thread runs at 10 Hz, later when loaded)
                        deadline = time.monotonic() + 30
                        while "5/10" not in screen.getvalue() and time.monotonic() < deadline:
                            time.sleep(0.02)
                        assert "5/10" in screen.getvalue()
                        log.warning("halfway through calibration")
            with progress("building the graph", 0):
                log.warning("a second record")
        assert handler.stream is screen  # restored after the display
    finally:
        root.handlers = saved
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())  # colours, cursor moves
    lines = [line for line in text.replace("\r", "\n").splitlines() if "halfway through" in line]
    assert lines and all(line.strip() == "halfway through calibration" for line in lines), lines
    assert "a second record" in text and "calibrating" in text and "10/10" in text


def test_progress__elsewhere_plain_lines_every_tenth(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.INFO, logger="agent.progress"),
        ProgressDisplay("converting", tty=False) as progress,
        progress("verifying", 400) as step,
    ):
        for i in range(1, 401):
            step(i, 400)
    messages = [r.getMessage() for r in caplog.records if r.name == "agent.progress"]
    counts = [m for m in messages if m.startswith("verifying: ") and "/400" in m]
    assert counts == [f"verifying: {n}/400" for n in range(40, 401, 40)]
    assert messages[0] == "converting" and messages[-1].startswith("converting: done in")
    assert any(m.startswith("verifying: done in") for m in messages)
