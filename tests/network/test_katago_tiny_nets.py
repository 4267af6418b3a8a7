"""KataGo itself loads our tiny networks and computes what our numpy runtime computes.

Uses the real KataGo binary (katrain 1.20.0's v1.18.1, OpenCL on PoCL; see tests/engines/katago). That
build crashes in its OpenCL transformer kernels on this kind of machine (spec Appendix B), so only
the convnet variants run here; transformer tiny nets are covered by the real transformer nets'
reference records. Each variant checks the writer (KataGo accepts the file), the version-dependent
post-processing (v8: -1 outputs; v11: sqrt-softplus short-term errors; v15: squared softplus,
pass MLP; v16: 4 policy channels) and Mish/ReLU/SiLU activations.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.backends.numpy.runtime import NumpyNet
from agent.cli.rawnn import run_rawnn
from agent.errors import EngineError
from agent.network.model import Activation
from agent.network.reader import read_network
from agent.network.writer import tiny_network, write_network

NEEDS = "needs the KataGo binary"
VARIANTS = {
    "v8-relu.bin.gz": dict(version=8, blocks=("ordinary", "gpool"), rope="none", seed=1),
    "v11-mish.bin.gz": dict(
        version=11, blocks=("gpool", "ordinary"), activation=Activation.MISH, rope="none", seed=2
    ),
    "v15-silu.txt.gz": dict(
        version=15, blocks=("ordinary", "gpool"), activation=Activation.SILU, rope="none", seed=3
    ),
    "v16-relu.bin": dict(version=16, blocks=("gpool",), rope="none", seed=4),
}
POSITIONS = [  # (board_x, board_y, rules, komi, moves, symmetry, optimism)
    (9, 9, "tromp-taylor", 7.5, [["B", "E5"], ["W", "C3"]], 0, 0.0),
    (9, 9, "japanese", 6.5, [["B", "C3"], ["W", "D3"], ["B", "D4"], ["W", "pass"]], 5, 0.2),
    (7, 5, "chinese", 7.0, [["B", "D3"], ["W", "C2"], ["B", "B2"]], 2, 0.2),
]
GTP_CONFIG = """logToStderr = false
logAllGTPCommunication = false
logSearchInfo = false
maxVisits = 1
numSearchThreads = 1
nnMaxBatchSize = 1
rules = tromp-taylor
homeDataDir = {home}
"""


@pytest.fixture(scope="module")
def katago(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict[str, str], Path]:
    from agent.engines import katago_binary as kb

    try:
        from agent.engines.katago_config import GENERIC_OPENCL_TUNING
    except ImportError:
        GENERIC_OPENCL_TUNING = getattr(kb, "GENERIC_OPENCL_TUNING", None)
    try:
        explicit = os.environ.get("KATAGO_EDGE_KATAGO_BINARY")
        if explicit:
            binary = kb.binary_from_path(Path(explicit))
        else:
            missing = kb.opencl_available()
            if missing is not None:
                pytest.skip(f"{NEEDS}: {missing}")
            binary = kb.binary_from_path(kb.ensure_katrain_katago(kb.default_cache_dir()), source="katrain")
    except EngineError as exc:
        pytest.skip(f"{NEEDS}: {exc}")
    tmp = tmp_path_factory.mktemp("katago-tiny")
    cfg = GTP_CONFIG.format(home=tmp / "home")
    if GENERIC_OPENCL_TUNING:  # skip KataGo's minutes-long first-run OpenCL tuning on PoCL
        (tmp / "tune.txt").write_text(GENERIC_OPENCL_TUNING)
        cfg += f"openclTunerFile = {tmp / 'tune.txt'}\n"
    (tmp / "gtp.cfg").write_text(cfg)
    return [str(binary.path)], binary.environ(), tmp / "gtp.cfg"


def _gtp_script(pos: tuple[Any, ...]) -> str:
    bx, by, rules, komi, moves, sym, opt = pos
    size = f"boardsize {bx}" if bx == by else f"rectangular_boardsize {bx} {by}"
    plays = "".join(f"play {c} {v}\n" for c, v in moves)
    return f"{size}\nclear_board\nkata-set-rules {rules}\nkomi {komi}\n{plays}kata-raw-nn {sym} {opt}\n"


def _parse_rawnn(text: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for block in text.split("= symmetry")[1:]:
        lines = block.split("\n\n")[0].split("\n")[1:]
        rec: dict[str, Any] = {}
        i = 0
        while i < len(lines):
            head = lines[i].split()
            if head and head[0] in ("policy", "whiteOwnership"):
                rows = []
                i += 1
                while i < len(lines) and lines[i].split() and lines[i].split()[0] not in ("policyPass",):
                    rows.extend(None if t == "NAN" else float(t) for t in lines[i].split())
                    i += 1
                rec[head[0]] = rows
                continue
            if len(head) == 2:
                rec[head[0]] = float(head[1])
            i += 1
        out.append(rec)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("file_name", list(VARIANTS))
def test_katago__accepts_tiny_network_and_agrees_with_numpy(
    tmp_path: Path, katago: tuple[list[str], dict[str, str], Path], file_name: str
) -> None:
    cmd, env, cfg = katago
    path = write_network(tiny_network(**VARIANTS[file_name]), tmp_path / file_name)  # type: ignore[arg-type]
    script = "".join(_gtp_script(p) for p in POSITIONS) + "quit\n"
    proc = subprocess.run(
        [*cmd, "gtp", "-model", str(path), "-config", str(cfg)],
        input=script, capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = _parse_rawnn(proc.stdout)
    assert len(theirs) == len(POSITIONS), proc.stdout[-2000:]
    network = read_network(path)
    net = NumpyNet(network)
    for pos, ref in zip(POSITIONS, theirs, strict=True):
        bx, by, rules, komi, moves, sym, opt = pos
        query = {"id": "q", "moves": moves, "rules": rules, "komi": komi, "boardXSize": bx, "boardYSize": by}
        out = io.StringIO()
        run_rawnn(net, network, io.StringIO(json.dumps(query)), out, symmetry=sym, policy_optimism=opt)
        ours = json.loads(out.getvalue())
        assert [p is None for p in ours["policy"]] == [p is None for p in ref["policy"]]
        pol = [(a, b) for a, b in zip(ours["policy"], ref["policy"], strict=True) if a is not None]
        assert max(abs(a - b) for a, b in pol) < 1e-4 and abs(ours["policyPass"] - ref["policyPass"]) < 1e-4
        for key in ("whiteWin", "whiteLoss", "noResult"):
            assert abs(ours[key] - ref[key]) < 1e-4, key
        for key in (
            "whiteLead",
            "whiteScoreSelfplay",
            "varTimeLeft",
            "shorttermWinlossError",
            "shorttermScoreError",
        ):
            assert abs(ours[key] - ref[key]) < 0.01, key
        assert abs(ours["whiteScoreSelfplaySq"] - ref["whiteScoreSelfplaySq"]) < max(
            0.01, 1e-4 * ref["whiteScoreSelfplaySq"]
        )
        own = np.abs(np.asarray(ours["whiteOwnership"]) - np.asarray(ref["whiteOwnership"]))
        assert own.max() < 1e-3
        if network.version < 9:
            assert ref["varTimeLeft"] == ref["shorttermWinlossError"] == ours["shorttermScoreError"] == -1
