"""Writer round trips, tiny networks, and clear errors for corrupt network files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from edge_fixtures import model_file

from agent.backends.base import NNInputs
from agent.backends.numpy.runtime import NumpyNet
from agent.errors import NetworkFileError, UnsupportedNetworkError
from agent.network.model import Activation, Network
from agent.network.reader import read_network, read_network_bytes
from agent.network.writer import network_to_bytes, tiny_network, write_network

TINY_VARIANTS = {
    "v8-conv": dict(version=8, blocks=("ordinary", "gpool"), rope="none"),
    "v11-mish": dict(version=11, blocks=("gpool",), activation=Activation.MISH, rope="none"),
    "v15-nested-tf": dict(version=15, blocks=("nested", "gpool"), rms_tip=True, activation=Activation.SILU),
    "v16-conv": dict(version=16, blocks=("ordinary",), rope="none"),
    "v17-fixed-rope": dict(version=17, blocks=("attention", "ffn", "nested"), rms_tip=True, rope="fixed"),
}


def _same_weights(a: Network, b: Network) -> bool:
    left, right = list(a.arrays()), list(b.arrays())
    return [n for n, _ in left] == [n for n, _ in right] and all(
        x.shape == y.shape and np.array_equal(x, y) for (_, x), (_, y) in zip(left, right, strict=True)
    )


def _board_inputs() -> NNInputs:
    spatial = np.zeros((2, 22, 19, 19), np.float32)
    spatial[:, 0, :9, :9] = 1
    spatial[1, 1, 2, 2] = spatial[1, 2, 4, 6] = 1
    glob = np.zeros((2, 19), np.float32)
    glob[:, 5] = -0.375
    return NNInputs(spatial, glob)


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
@pytest.mark.parametrize("suffix", [".bin.gz", ".txt.gz", ".bin", ".txt"])
def test_writer__round_trip_gives_identical_weights(tmp_path: Path, variant: str, suffix: str) -> None:
    net = tiny_network(**TINY_VARIANTS[variant])  # type: ignore[arg-type]
    back = read_network(write_network(net, tmp_path / f"tiny{suffix}"))
    assert (back.name, back.version, back.header_ints) == (net.name, net.version, net.header_ints)
    assert back.postprocess == net.postprocess
    assert _same_weights(net, back)
    a, b = NumpyNet(net).evaluate(_board_inputs()), NumpyNet(back).evaluate(_board_inputs())
    assert np.array_equal(a.value, b.value) and np.array_equal(a.policy, b.policy)
    assert np.isfinite(a.policy).all() and np.isfinite(a.ownership).all()


def test_writer__real_network_rewrites_byte_for_byte(models_dir: Path) -> None:
    path = model_file(models_dir, "b6c96")
    assert network_to_bytes(read_network(path)) == gzip.decompress(path.read_bytes())


def test_writer__tiny_network_shapes_follow_the_version() -> None:
    assert tiny_network(8).score_channels == 4 and tiny_network(8).policy_channels == 1
    assert tiny_network(15).policy_head.gpool_to_pass_mul2 is not None
    assert tiny_network(17, policy_channels=4).policy_channels == 4
    with pytest.raises(ValueError, match="ReLU"):
        tiny_network(10, activation=Activation.SILU)


# --- corrupt files -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bytes() -> bytes:
    return network_to_bytes(tiny_network(15, blocks=("ordinary", "gpool", "nested"), rms_tip=True))


@pytest.mark.parametrize("fraction", [0.0005, 0.01, 0.1, 0.37, 0.5, 0.9, 0.9999])
def test_corrupt__truncated_file_names_record_and_offset(
    tmp_path: Path, tiny_bytes: bytes, fraction: float
) -> None:
    cut = tiny_bytes[: int(len(tiny_bytes) * fraction)]
    path = tmp_path / "cut.bin.gz"
    path.write_bytes(gzip.compress(cut))
    with pytest.raises(NetworkFileError) as exc:
        read_network(path)
    msg = str(exc.value)
    assert str(path) in msg and "record '" in msg and "at byte " in msg


def test_corrupt__truncated_gzip_stream(tmp_path: Path, tiny_bytes: bytes) -> None:
    data = gzip.compress(tiny_bytes)
    path = tmp_path / "cut.bin.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(NetworkFileError, match="gzip"):
        read_network(path)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        (b"\n15\n22\n", b"\n1x\n22\n", r"record 'header' at byte \d+: expected modelVersion, got '1x'"),
        (b"\n15\n22\n", b"\n99\n22\n", "model version 99 is not supported"),
        (b"\n15\n22\n", b"\n15\n23\n", "needs 22 spatial and 19 global"),
        (b"tiny-b3c8-v15\n", b"tiny-b3c8-v15 extra\n", r"record 'header' at byte 14: expected modelVersion"),
    ],
)
def test_corrupt__flipped_header(tiny_bytes: bytes, old: bytes, new: bytes, match: str) -> None:
    assert tiny_bytes.count(old) >= 1
    with pytest.raises(NetworkFileError, match=match):
        read_network_bytes(tiny_bytes.replace(old, new, 1), binary=True, source="flipped.bin")


def test_corrupt__unknown_block_kind_names_the_block(tiny_bytes: bytes) -> None:
    data = tiny_bytes.replace(b"gpool_block\nmodel.blocks.1\n", b"fancy_block\nmodel.blocks.1\n", 1)
    with pytest.raises(
        UnsupportedNetworkError, match=r"unknown block kind 'fancy_block' \(block 'model.blocks.1'\)"
    ):
        read_network_bytes(data, binary=True, source="x.bin")


def test_corrupt__wrong_tensor_size(tiny_bytes: bytes) -> None:
    data = tiny_bytes.replace(b"model.linear_global\n19\n8\n", b"model.linear_global\n19\n9\n", 1)
    with pytest.raises(
        NetworkFileError, match=r"record 'model.linear_global' .*out channels: got 9, expected 8"
    ):
        read_network_bytes(data, binary=True, source="x.bin")
    # a bigger kernel than stored: the float block runs into the next record
    data = tiny_bytes.replace(b"model.conv_spatial\n3\n3\n", b"model.conv_spatial\n3\n5\n", 1)
    with pytest.raises(NetworkFileError, match=r"record '(model.conv_spatial|model.linear_global)'"):
        read_network_bytes(data, binary=True, source="x.bin")


def test_corrupt__nan_weight_and_trailing_bytes(tiny_bytes: bytes) -> None:
    at = tiny_bytes.index(b"@BIN@") + 5
    nan = np.array([np.nan], "<f4").tobytes()
    with pytest.raises(NetworkFileError, match="non-finite value at index 0"):
        read_network_bytes(tiny_bytes[:at] + nan + tiny_bytes[at + 4 :], binary=True)
    with pytest.raises(NetworkFileError, match="unexpected bytes after the value head"):
        read_network_bytes(tiny_bytes + b"junk\n", binary=True)


def test_corrupt__unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NetworkFileError, match="cannot read"):
        read_network(tmp_path / "missing.bin.gz")
    (tmp_path / "net.onnx").write_bytes(b"x")
    with pytest.raises(NetworkFileError, match="unknown network file suffix"):
        read_network(tmp_path / "net.onnx")


def test_corrupt__text_weights_bad_token_and_truncation() -> None:
    text = network_to_bytes(tiny_network(11, blocks=("ordinary",), rope="none"), binary=False)
    lines = text.split(b"\n")
    at = lines.index(b"model.linear_global") + 3 + 5  # name, 19, 8, then the 6th weight
    bad = b"\n".join([*lines[:at], b"1.5abc", *lines[at + 1 :]])
    with pytest.raises(
        NetworkFileError, match=r"record 'model.linear_global' .*value 5 of matmul weights .*'1.5abc'"
    ):
        read_network_bytes(bad, binary=False, source="x.txt")
    cut = b"\n".join(lines[: at + 3])
    with pytest.raises(
        NetworkFileError, match=r"record 'model.linear_global' .*file ends where float 8 of 152"
    ):
        read_network_bytes(cut, binary=False, source="x.txt")
    assert read_network_bytes(text, binary=False).version == 11


def test_reader__old_versions_are_unsupported_and_bare_gz_is_sniffed(
    tmp_path: Path, tiny_bytes: bytes
) -> None:
    with pytest.raises(
        UnsupportedNetworkError, match=r"model version 7 is not supported \(supported: 8\.\.17\)"
    ):
        read_network_bytes(tiny_bytes.replace(b"\n15\n22\n", b"\n7\n22\n", 1), binary=True)
    net = tiny_network(11, blocks=("ordinary",), rope="none")
    for suffix, binary in ((".bin.gz", True), (".txt.gz", False)):
        path = write_network(net, tmp_path / f"n{suffix}")
        bare = path.rename(tmp_path / f"bare-{int(binary)}.GZ")  # suffixes are case-insensitive
        assert _same_weights(read_network(bare), net)
