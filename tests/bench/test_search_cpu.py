"""The search bench's CPU split (issue #21): the network's CPU time next to the search's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edge_fixtures import model_file

from agent.bench.positions import bench_positions, encode_batch
from agent.bench.search import CpuTimedNet, run_search_bench


def test_search_bench__cpu_split_of_real_searches(models_dir: Path, model_store: Any) -> None:
    from agent.models.serving import RuntimeEntry, open_network

    source = model_file(models_dir, "b6c96")
    net, _ = open_network(source, [RuntimeEntry("onnx", "fp32", required=True)], model_store, threads=1)
    positions = bench_positions()[:2]
    try:
        timed = CpuTimedNet(net)
        inputs = encode_batch(positions, 1)
        direct, counted = net.evaluate(inputs), timed.evaluate(inputs)
        np.testing.assert_array_equal(direct.policy, counted.policy)
        np.testing.assert_array_equal(direct.value, counted.value)
        assert timed.cpu_s > 0 and timed.postprocess_params == net.postprocess_params
        r = run_search_bench(net, net.postprocess_params, positions, threads=1, visits=8, standalone_s=0.3)
    finally:
        net.close()
    d = r.to_dict()
    # one search thread, one runtime thread: the network runs in the search thread
    assert 0 < r.network_cpu_s < r.cpu_s
    assert d["visits_over_evals_cpu"] == pytest.approx(r.network_cpu_s / r.cpu_s, abs=1e-3)
    assert 0 < d["visits_over_evals_cpu"] < 1
    total = r.visits_per_s * r.wall_s
    assert total == pytest.approx(16, abs=1e-6)  # 8 visits on each of 2 positions
    assert d["cpu_ms_per_visit"] == pytest.approx(r.cpu_s / total * 1e3, abs=1e-3)
    assert d["search_cpu_ms_per_visit"] == pytest.approx(
        d["cpu_ms_per_visit"] - d["network_cpu_ms_per_visit"], abs=2e-3
    )
