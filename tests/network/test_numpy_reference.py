"""The numpy forward pass + shared post-processing reproduce KataGo's recorded kata-raw-nn outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from edge_fixtures import model_file, row_context
from network_refdata import compare, load_reference

from agent.backends.base import NNInputs
from agent.backends.numpy.runtime import NumpyNet, set_blas_threads
from agent.backends.registry import load_net
from agent.game.symmetry import apply_symmetry
from agent.network.postprocess import RowContext, postprocess_row
from agent.network.reader import read_network


@pytest.mark.parametrize("key", ["b6c96", "b7c96-cnorm", "b7c96-gqa"])
def test_numpy__small_nets_match_katago_on_all_positions(
    models_dir: Path, reference_dir: Path, key: str
) -> None:
    net = NumpyNet(model_file(models_dir, key))
    ref = load_reference(reference_dir, key)
    errors = compare(net, net.network.postprocess, ref, list(range(len(ref.records))))
    assert errors.positions == 99
    assert not errors.violations(), errors.worst


def test_numpy__b10c384_matches_katago_on_a_subset(models_dir: Path, reference_dir: Path) -> None:
    net = NumpyNet(model_file(models_dir, "b10c384"))
    ref = load_reference(reference_dir, "b10c384")
    # every board shape (9x9, 13x13, 13x9, 19x19), kos, passes and finished games, 2 batches
    sizes: dict[tuple[int, int], list[int]] = {}
    for i, rec in enumerate(ref.records):
        sizes.setdefault((rec["board_x_size"], rec["board_y_size"]), []).append(i)
    wanted = {i for idxs in sizes.values() for i in idxs[:3]}
    wanted |= {i for i, r in enumerate(ref.records) if r["selection_reason"] != "spread"}
    indices = sorted(wanted)[:16]
    errors = compare(net, net.network.postprocess, ref, indices)
    assert not errors.violations(), errors.worst


@pytest.mark.slow
def test_numpy__b10c384_matches_katago_on_all_positions(models_dir: Path, reference_dir: Path) -> None:
    net = NumpyNet(model_file(models_dir, "b10c384"), threads=1)
    ref = load_reference(reference_dir, "b10c384")
    errors = compare(net, net.network.postprocess, ref, list(range(len(ref.records))))
    assert not errors.violations(), errors.worst


def test_numpy__blas_threads_can_be_capped() -> None:
    import ctypes

    assert set_blas_threads(1)
    libs = {
        ln.split()[-1] for ln in Path("/proc/self/maps").read_text().splitlines() if "openblas" in ln.lower()
    }
    getters = [getattr(ctypes.CDLL(p), "scipy_openblas_get_num_threads64_", None) for p in libs]
    assert [g() for g in getters if g is not None] in ([], [1])


@pytest.mark.parametrize("key", ["b6c96", "b7c96-cnorm"])
def test_numpy__small_buffer_equals_19x19_buffer(models_dir: Path, reference_dir: Path, key: str) -> None:
    """A 9x9 board evaluated in a 9x9 buffer gives the 19x19-buffer outputs (mask + relative RoPE)."""
    net = load_net(model_file(models_dir, key), runtime="numpy")
    ref = load_reference(reference_dir, key)
    i = next(i for i, r in enumerate(ref.records) if r["board_x_size"] == 9 and r["move_number"] > 20)
    big = net.evaluate(NNInputs(ref.spatial[i : i + 1], ref.global_[i : i + 1]))
    small = net.evaluate(
        NNInputs(np.ascontiguousarray(ref.spatial[i : i + 1, :, :9, :9]), ref.global_[i : i + 1])
    )
    assert np.allclose(big.value, small.value, atol=1e-4)
    assert np.allclose(big.score_value, small.score_value, atol=1e-4)
    big_own = big.ownership.reshape(19, 19)[:9, :9]
    assert np.allclose(big_own, small.ownership.reshape(9, 9), atol=1e-4)
    big_pol = big.policy.reshape(-1, 19, 19)[:, :9, :9]
    assert np.allclose(big_pol, small.policy.reshape(-1, 9, 9), atol=1e-4)


@pytest.mark.parametrize("board", [(19, 19), (13, 9)])
def test_numpy__every_symmetry_maps_back_to_the_canonical_frame(
    models_dir: Path, reference_dir: Path, board: tuple[int, int]
) -> None:
    """The net is trained to be symmetric: each symmetry's un-symmetrised outputs ~ symmetry 0's."""
    net = NumpyNet(model_file(models_dir, "b6c96"))
    ref = load_reference(reference_dir, "b6c96")
    i = next(
        i for i, r in enumerate(ref.records)
        if (r["board_x_size"], r["board_y_size"]) == board and r["move_number"] > 15
    )  # fmt: skip
    rec = ref.records[i]
    spatial = np.stack([apply_symmetry(ref.spatial[i], s) for s in range(8)])
    raw = net.evaluate(NNInputs(np.ascontiguousarray(spatial), np.repeat(ref.global_[i : i + 1], 8, axis=0)))
    base = row_context(rec, ref.spatial[i], ref.global_[i])
    evals = []
    for s in range(8):
        ctx = RowContext(
            base.board_x, base.board_y, base.white_to_move, base.legal, base.no_result_impossible, s
        )
        evals.append(postprocess_row(raw, s, net.network.postprocess, ctx, policy_optimism=0.2))
    expected_own = np.asarray(rec["rawnn"]["whiteOwnership"])
    for e in evals:
        # symmetries differ by ~0.03-0.06 on average; a wrong inverse map differs by 0.28-0.86
        assert np.abs(e.white_ownership - expected_own).mean() < 0.1
        assert abs(e.policy.sum() - 1.0) < 1e-5 and not e.policy[~e.legal].any()


def test_numpy__reads_path_and_reports_info(models_dir: Path) -> None:
    net = load_net(str(model_file(models_dir, "b6c96")))
    assert (net.info.runtime, net.info.precision, net.info.model_version) == ("numpy", "fp32", 8)


def test_numpy__empty_mask_is_an_inference_error(models_dir: Path) -> None:
    from agent.errors import InferenceError

    net = NumpyNet(read_network(model_file(models_dir, "b6c96")))
    with pytest.raises(InferenceError, match="empty board mask"):
        net.evaluate(NNInputs(np.zeros((1, 22, 19, 19), np.float32), np.zeros((1, 19), np.float32)))


def test_numpy__chunked_batch_equals_whole_batch(models_dir: Path, reference_dir: Path) -> None:
    whole = NumpyNet(model_file(models_dir, "b7c96-gqa"))
    chunked = NumpyNet(whole.network, max_chunk=3)
    ref = load_reference(reference_dir, "b7c96-gqa")
    inputs = NNInputs(ref.spatial[:10], ref.global_[:10])
    a, b = whole.evaluate(inputs), chunked.evaluate(inputs)
    assert b.policy.shape == (10, 2, 361) and b.score_value.shape == (10, 6)
    for name in ("policy", "policy_pass", "value", "score_value", "ownership"):
        assert np.allclose(getattr(a, name), getattr(b, name), atol=1e-4), name
