"""Logs are data-safe: request text cannot forge lines or reach a terminal raw; log files stay private."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from agent.logs import SafeFormatter, escape_controls


def test_logs__escape_controls__newline_esc_nul_c1_and_line_separators():
    assert escape_controls("a\nb\r\x1b[31m\x00\x85\u2028ok é") == "a\\nb\\r\\x1b[31m\\x00\\x85\\u2028ok é"


def test_logs__a_query_id_with_a_newline_stays_one_log_line():
    from agent.backends.fake import FakeNet
    from agent.engines.native import NativeEngine
    from agent.protocol.service import AnalysisService

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("agent.protocol.service")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    engine = NativeEngine(FakeNet(), seed=1)
    service = AnalysisService(engine)
    try:
        forged = "x\n2026-12-07 12:00:00 ERROR agent.app.daemon: FORGED \x1b[2J\x00"
        line = json.dumps({"id": forged, "moves": 5})
        responses: list[dict] = []
        service.handle_line(line, responses.append)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        service.close(2)
    assert responses[0]["id"] == forged and "error" in responses[0]  # the reply keeps the id
    lines = buf.getvalue().splitlines()
    assert (
        len(lines) == 1 and "x\\n2026-12-07 12:00:00 ERROR agent.app.daemon: FORGED \\x1b[2J\\x00" in lines[0]
    )


def test_logs__own_multi_line_text_keeps_its_lines_arguments_do_not():
    fmt = SafeFormatter("%(levelname)s: %(message)s")
    own = logging.LogRecord("x", logging.INFO, __file__, 1, "report:\n  a %s\n  b %d", ("1\n2", 3), None)
    assert fmt.format(own).splitlines() == ["INFO: report:", "      a 1\\n2", "      b 3"]
    whole = logging.LogRecord("x", logging.INFO, __file__, 1, "plain\nforged", None, None)
    assert fmt.format(whole) == "INFO: plain\\nforged"


def test_logs__stderr_log_file_loses_world_read(tmp_path: Path):
    log = tmp_path / "agent.log"
    log.touch()
    log.chmod(0o644)
    code = "from agent.logs import setup_logging; import logging; setup_logging(); logging.getLogger('t').warning('hi')"
    with log.open("a") as err:
        subprocess.run([sys.executable, "-c", code], stderr=err, check=True, timeout=60, env=dict(os.environ))
    assert oct(log.stat().st_mode & 0o777) == "0o640"
    assert log.read_text().rstrip().endswith("WARNING t: hi")
