"""KataGo's own ``benchmark`` command, run in the same session on the same game, for ratios.

Absolute figures drift on shared machines; a ratio to KataGo measured minutes apart on the same
machine, network, threads and game does not. ``katago benchmark`` samples positions from the SGF
it is given (``-sgf``), so it is handed the game our own benchmark positions come from.

Its result lines look like (one per thread count)::

    numSearchThreads =  2: 10 / 10 positions, visits/s = 95.60 nnEvals/s = 80.03 nnBatches/s = 41.08 avgBatchSize = 1.95 (52.3 secs)
"""

from __future__ import annotations

import logging
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.errors import EngineError

logger = logging.getLogger(__name__)

_LINE = re.compile(
    r"numSearchThreads\s*=\s*(?P<threads>\d+):.*?visits/s\s*=\s*(?P<visits>[\d.]+)\s+"
    r"nnEvals/s\s*=\s*(?P<evals>[\d.]+)\s+nnBatches/s\s*=\s*(?P<batches>[\d.]+)\s+"
    r"avgBatchSize\s*=\s*(?P<avg>[\d.]+)"
)


@dataclass(frozen=True)
class KataGoBenchLine:
    threads: int
    visits_per_s: float
    nn_evals_per_s: float
    nn_batches_per_s: float
    avg_batch_size: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_benchmark_output(text: str) -> list[KataGoBenchLine]:
    """The first ``numSearchThreads = N: ...`` result line per thread count (KataGo repeats some
    lines in its closing summary)."""
    out: list[KataGoBenchLine] = []
    for m in _LINE.finditer(text):
        if any(line.threads == int(m["threads"]) for line in out):
            continue
        out.append(
            KataGoBenchLine(
                threads=int(m["threads"]),
                visits_per_s=float(m["visits"]),
                nn_evals_per_s=float(m["evals"]),
                nn_batches_per_s=float(m["batches"]),
                avg_batch_size=float(m["avg"]),
            )
        )
    return out


BENCH_CONFIG = """# written by katago-edge bench
logToStderr = false
logFile = {log}
homeDataDir = {home}
maxVisits = {visits}
numSearchThreads = {max_threads}
nnMaxBatchSize = {max_threads}
nnCacheSizePowerOfTwo = 18
rules = tromp-taylor
{extra}"""


def run_katago_benchmark(
    binary: Path,
    model: Path,
    sgf_text: str,
    *,
    threads: list[int],
    visits: int,
    positions: int,
    timeout_s: float = 1800.0,
    workdir: Path | None = None,
    env: dict[str, str] | None = None,
) -> tuple[list[KataGoBenchLine], str]:
    """Run ``katago benchmark`` and return its parsed result lines and full output."""
    work = workdir or Path(tempfile.mkdtemp(prefix="katago-edge-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    sgf = work / "bench.sgf"
    sgf.write_text(sgf_text)
    from agent.engines.katago_binary import binary_from_path
    from agent.engines.katago_config import GENERIC_OPENCL_TUNING, pocl_only

    extra = ""
    if pocl_only():
        # Without a tuner file KataGo's OpenCL backend tunes itself for minutes on PoCL first.
        tuner = work / "opencl-tuning.txt"
        tuner.write_text(GENERIC_OPENCL_TUNING)
        extra = f"openclTunerFile = {tuner}\n"
    cfg = work / "bench.cfg"
    cfg.write_text(
        BENCH_CONFIG.format(
            log=work / "katago.log", home=work / "home", visits=visits, max_threads=max(threads), extra=extra
        )
    )
    kg = binary_from_path(binary)
    cmd = [
        str(kg.path),
        "benchmark",
        "-model",
        str(model),
        "-config",
        str(cfg),
        "-sgf",
        str(sgf),
        "-v",
        str(visits),
        "-t",
        ",".join(str(t) for t in threads),
        "-n",
        str(positions),
    ]
    logger.info("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**kg.environ(), **(env or {})},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise EngineError(f"katago benchmark did not finish within {timeout_s:.0f} s") from exc
    except OSError as exc:
        raise EngineError(f"cannot run {binary}: {exc}") from exc
    text = proc.stdout + "\n" + proc.stderr
    lines = parse_benchmark_output(text)
    if proc.returncode != 0 or not lines:
        tail = "\n".join(text.strip().splitlines()[-8:])
        raise EngineError(f"katago benchmark failed (exit {proc.returncode}):\n{tail}")
    return lines, text
