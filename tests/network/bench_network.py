"""Benchmark (not a test): single-position and batch-8 evaluation time, numpy vs ONNX Runtime.

    .venv/bin/python tests/network/bench_network.py [--repeat N] [--nets b6c96,b10c384]

Uses the 19x19 positions of ``../shared/reference/inputs-v7.npz``; prints min and median wall time
per call after one warm-up call. Results and the machine go in ``docs/network.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from agent.backends.base import NNInputs
from agent.backends.registry import load_net

NETS = {"b6c96": "g170-b6c96-s175395328-d26788732.bin.gz", "b10c384": "b10c384h6nbttflrs.bin.gz"}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except OSError:
        return platform.processor()
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--nets", default="b6c96,b10c384")
    ap.add_argument("--runtimes", default="numpy,onnx")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[2].parent / "shared"
    models = Path(os.environ.get("KATAGO_EDGE_MODELS", root / "models"))
    data = np.load(root / "reference" / "inputs-v7.npz")
    full = [i for i in range(len(data["ids"])) if data["spatial"][i, 0].sum() == 361]
    print(
        f"# {cpu_name()}, {os.cpu_count()} CPUs, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '-')}"
    )
    for key in args.nets.split(","):
        for runtime in args.runtimes.split(","):
            net = load_net(models / NETS[key], runtime=runtime)
            for batch in (1, 8):
                idx = full[:batch]
                inputs = NNInputs(data["spatial"][idx], data["global"][idx])
                net.evaluate(inputs)
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    net.evaluate(inputs)
                    times.append(time.perf_counter() - t0)
                print(
                    f"{key:8s} {runtime:6s} batch {batch}: min {min(times) * 1000:8.1f} ms  "
                    f"median {statistics.median(times) * 1000:8.1f} ms  "
                    f"({min(times) * 1000 / batch:.1f} ms/position)"
                )


if __name__ == "__main__":
    main()
