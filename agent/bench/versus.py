"""Head to head: the same analysis queries through our engine and KataGo's ``analysis``, interleaved.

``katago-edge bench --katago BINARY`` runs this for every variant the network benchmark built
(runtime/precision, from the model store) and every search-thread count ``t``:

* **KataGo**: one ``katago analysis`` process (``numSearchThreads = t``, ``nnMaxBatchSize = t``,
  ``numEigenThreadsPerModel = t``, one analysis thread) kept running for the whole comparison;
* **ours**: ``NativeEngine`` + ``AnalysisService`` in this process over the variant's network with
  ``t`` search threads, ``t`` runtime threads and ``nnMaxBatchSize = t``.

Each benchmark position is one analysis query (same JSON for both, ``maxVisits`` fixed), sent
after a ``clear_cache`` so that every visit is a real evaluation; the two engines alternate
position by position and start order alternates each round, so a drift of the machine's load
hits both alike. Per engine: visits (from ``rootInfo``) over wall seconds, and visits per
CPU-second (this process's CPU time for ours; the child's ``utime + stime`` from ``/proc`` for
KataGo), whose ratio ``cpu_s / wall_s`` is the number of **cores each actually used**.

Ratios (ours / KataGo) are only computed for variants that passed the model store's
verification (``ratio_if_verified``); a failing variant is measured and shown, marked, without a
ratio. Pin the whole run (``taskset -c 0 katago-edge bench ...``) to compare per core: the
KataGo child inherits the CPU set.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from agent.backends.base import NeuralNet
from agent.bench.positions import BenchPosition
from agent.errors import EngineError
from agent.records import field_dict

logger = logging.getLogger(__name__)

KATAGO_CONFIG = """# written by katago-edge bench
logToStderr = false
logFile = {log}
homeDataDir = {home}
numAnalysisThreads = 1
numSearchThreads = {threads}
nnMaxBatchSize = {threads}
numEigenThreadsPerModel = {threads}
nnCacheSizePowerOfTwo = 18
reportAnalysisWinratesAs = BLACK
"""


def overhead_ratio(visits_per_s: float, evals_per_s: float) -> float:
    """Search overhead: visits/s over the network's own standalone evals/s (same net, same
    runtime threads, batch = search threads). A visit costs one evaluation, so 1.0 means the
    search adds nothing; the target is >= 0.95 at one core."""
    return visits_per_s / evals_per_s if evals_per_s > 0 else 0.0


def ratio_if_verified(ours: float, katago: float, verified: bool) -> float | None:
    """Ours / KataGo, only for a variant whose conversion passed the model store's verification
    (a failing INT8 must not make us look faster than we are)."""
    if not verified or katago <= 0:
        return None
    return round(ours / katago, 3)


def spread(values: list[float]) -> float:
    """Run-to-run spread: (max - min) / median of the per-round figures."""
    if len(values) < 2:
        return 0.0
    mid = statistics.median(values)
    return (max(values) - min(values)) / mid if mid > 0 else 0.0


def _per(amounts: list[int] | list[float], seconds: list[float]) -> float:
    """The summed ``amounts`` per summed ``seconds`` (0 without any seconds)."""
    total = sum(seconds)
    return sum(amounts) / total if total > 0 else 0.0


@dataclass
class Tally:
    """One engine's queries: visits, wall and CPU seconds, per round."""

    visits: list[int] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)

    def add(self, round_: int, visits: int, wall: float, cpu: float) -> None:
        while len(self.visits) <= round_:
            self.visits.append(0)
            self.wall_s.append(0.0)
            self.cpu_s.append(0.0)
        self.visits[round_] += visits
        self.wall_s[round_] += wall
        self.cpu_s[round_] += cpu

    @property
    def visits_per_s(self) -> float:
        return _per(self.visits, self.wall_s)

    @property
    def visits_per_cpu_s(self) -> float:
        return _per(self.visits, self.cpu_s)

    @property
    def cores_used(self) -> float:
        return _per(self.cpu_s, self.wall_s)

    @property
    def spread(self) -> float:
        return spread([v / w for v, w in zip(self.visits, self.wall_s, strict=True) if w > 0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "visits": sum(self.visits),
            "wall_s": round(sum(self.wall_s), 3),
            "cpu_s": round(sum(self.cpu_s), 3),
            "visits_per_s": round(self.visits_per_s, 2),
            "visits_per_cpu_s": round(self.visits_per_cpu_s, 2),
            "cores_used": round(self.cores_used, 2),
            "spread": round(self.spread, 3),
        }


@dataclass
class VersusRow:
    variant: str
    verified: bool
    search_threads: int
    runtime_threads: int
    ours: Tally
    katago: Tally

    def to_dict(self) -> dict[str, Any]:
        return {
            **field_dict(self),
            "visits_per_s_ratio": ratio_if_verified(
                self.ours.visits_per_s, self.katago.visits_per_s, self.verified
            ),
            "visits_per_cpu_s_ratio": ratio_if_verified(
                self.ours.visits_per_cpu_s, self.katago.visits_per_cpu_s, self.verified
            ),
        }


def _child_cpu_s(pid: int) -> float:
    """``utime + stime`` of a process (seconds), from ``/proc/<pid>/stat``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class KataGoAnalysis:
    """A running ``katago analysis`` answering one query at a time."""

    def __init__(self, binary: Path, model: Path, threads: int, workdir: Path | None = None) -> None:
        from agent.engines.katago_binary import binary_from_path

        work = workdir or Path(tempfile.mkdtemp(prefix="katago-edge-versus-"))
        work.mkdir(parents=True, exist_ok=True)
        cfg = work / f"analysis-{threads}t.cfg"
        cfg.write_text(KATAGO_CONFIG.format(log=work / "katago.log", home=work / "home", threads=threads))
        kg = binary_from_path(binary)
        cmd = [str(kg.path), "analysis", "-model", str(model), "-config", str(cfg)]
        logger.info("running %s", " ".join(cmd))
        self._stderr = (work / "katago.stderr").open("wb")
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=kg.environ(),
            )
        except OSError as exc:
            self._stderr.close()
            raise EngineError(f"cannot run {binary}: {exc}") from exc
        self._lines: queue.Queue[bytes] = queue.Queue()
        assert self.proc.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self.proc.stdout,), name="katago-versus-reader", daemon=True
        )
        self._reader.start()
        self._n = 0

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(b"")

    def query(self, q: dict[str, Any], timeout_s: float) -> tuple[dict[str, Any], float, float]:
        """Clear KataGo's NN cache, send ``q``; its final response, wall and CPU seconds."""
        assert self.proc.stdin is not None
        self._n += 1
        qid = f"versus-{self._n}"
        self._send({"id": f"clear-{self._n}", "action": "clear_cache"})
        self._wait(lambda r: r.get("id") == f"clear-{self._n}", timeout_s)
        cpu0 = _child_cpu_s(self.proc.pid)
        t0 = time.perf_counter()
        self._send({**q, "id": qid})
        final = self._wait(lambda r: r.get("id") == qid and not r.get("isDuringSearch", False), timeout_s)
        wall = time.perf_counter() - t0
        return final, wall, _child_cpu_s(self.proc.pid) - cpu0

    def _send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(obj).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise EngineError(f"katago analysis stopped: {exc}") from exc

    def _wait(self, done: Any, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise EngineError(f"katago analysis gave no answer within {timeout_s:.0f} s")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if not line:
                raise EngineError(f"katago analysis exited (code {self.proc.poll()})")
            try:
                resp = json.loads(line)
            except ValueError:
                continue
            if "error" in resp and resp.get("id", "").startswith(("versus-", "clear-")):
                raise EngineError(f"katago analysis: {resp['error']}")
            if done(resp):
                return dict(resp)

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):  # a child that died has closed its end
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._stderr.close()


class OurAnalysis:
    """Our engine over ``net`` answering one query at a time, like ``KataGoAnalysis``."""

    def __init__(self, net: NeuralNet, threads: int, visits: int) -> None:
        from agent.engines.native import NativeEngine
        from agent.protocol.service import AnalysisService
        from agent.search.params import SearchParams

        params = SearchParams(max_visits=visits, num_threads=threads)
        self.engine = NativeEngine(net, default_params=params, max_batch_size=threads, seed=1)
        self.service = AnalysisService(self.engine)

    def query(self, q: dict[str, Any], timeout_s: float) -> tuple[dict[str, Any], float, float]:
        self.engine.clear_cache()
        done = threading.Event()
        finals: list[dict[str, Any]] = []

        def emit(resp: dict[str, Any]) -> None:
            if not resp.get("isDuringSearch"):
                finals.append(resp)
                done.set()

        cpu0 = time.process_time()
        t0 = time.perf_counter()
        self.service.handle_query(q, emit)
        if not done.wait(timeout_s):
            raise EngineError(f"our analysis gave no answer within {timeout_s:.0f} s")
        wall = time.perf_counter() - t0
        return finals[0], wall, time.process_time() - cpu0

    def close(self) -> None:
        self.engine.close(timeout=5.0)


def _visits(resp: dict[str, Any], who: str) -> int:
    if "error" in resp:
        raise EngineError(f"{who} answered an error: {resp['error']}")
    return int(resp["rootInfo"]["visits"])


def run_versus(
    binary: Path,
    model: Path,
    nets: dict[str, tuple[Any, bool]],
    positions: list[BenchPosition],
    *,
    thread_counts: list[int],
    visits: int,
    rounds: int = 2,
    timeout_s: float = 900.0,
    progress: Any = None,
) -> list[VersusRow]:
    """``nets``: variant label -> (``open(threads) -> NeuralNet``, verified). Every variant and
    thread count against one KataGo process per thread count, interleaved (module docstring)."""
    rows: list[VersusRow] = []
    with tempfile.TemporaryDirectory(prefix="katago-edge-versus-") as tmp:
        for t in thread_counts:
            rows += _versus_threads(
                binary, model, nets, positions, t, visits, rounds, timeout_s, progress, Path(tmp)
            )
    return rows


def _versus_threads(
    binary: Path,
    model: Path,
    nets: dict[str, tuple[Any, bool]],
    positions: list[BenchPosition],
    t: int,
    visits: int,
    rounds: int,
    timeout_s: float,
    progress: Any,
    workdir: Path,
) -> list[VersusRow]:
    """One KataGo process with ``t`` threads against every variant with ``t`` threads."""
    rows: list[VersusRow] = []
    katago = KataGoAnalysis(binary, model, t, workdir / f"{t}t")
    try:
        warm = positions[0].query("warmup", min(visits, 8))
        katago.query(warm, timeout_s)  # loads the network, first allocations
        for label, (open_net, verified) in nets.items():
            if progress is not None:
                progress(f"versus KataGo: {label}, {t} thread(s)")
            net = open_net(t)
            ours = OurAnalysis(net, t, visits)
            row = VersusRow(label, verified, t, t, Tally(), Tally())
            try:
                ours.query(warm, timeout_s)
                for r in range(rounds):
                    for i, pos in enumerate(positions):
                        q = pos.query(f"p{i}", visits)
                        order = ((ours, row.ours, "ours"), (katago, row.katago, "katago"))
                        for engine, tally, who in order if (r + i) % 2 == 0 else order[::-1]:
                            resp, wall, cpu = engine.query(q, timeout_s)
                            tally.add(r, _visits(resp, who), wall, cpu)
            finally:
                ours.close()
                net.close()
            rows.append(row)
    finally:
        katago.close()
    return rows


def versus_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Printable rows (``VersusRow.to_dict``): ours beside KataGo, ratios only where verified."""

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}x"

    out = []
    for d in rows:
        o, k = d["ours"], d["katago"]
        out.append(
            [
                d["variant"] if d["verified"] else f"{d['variant']} (FAILS verification)",
                f"{d['search_threads']}/{d['runtime_threads']}",
                f"{o['visits_per_s']:.1f} ±{o['spread']:.0%}",
                f"{k['visits_per_s']:.1f} ±{k['spread']:.0%}",
                fmt(d["visits_per_s_ratio"]),
                f"{o['visits_per_cpu_s']:.1f}",
                f"{k['visits_per_cpu_s']:.1f}",
                fmt(d["visits_per_cpu_s_ratio"]),
                f"{o['cores_used']:.2f} / {k['cores_used']:.2f}",
            ]
        )
    return out


VERSUS_COLUMNS = (
    "variant",
    "search/runtime threads",
    "ours visits/s",
    "KataGo visits/s",
    "ratio",
    "ours visits/CPU-s",
    "KataGo visits/CPU-s",
    "ratio/CPU",
    "cores used ours / KataGo",
)
