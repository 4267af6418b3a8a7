"""The desired-state message and the download of a deployed network: refusals, resume with a
Range request against the real ``fleet serve-model`` server, the size limit, the sha256 check."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from agent.app.desired import parse_desired
from agent.app.download import check_and_place, download, part_path
from agent.errors import DeploymentError
from agent.fleet.model_server import ModelServer
from agent.fsutil import sha256_file

SHA = "ab" * 32
URL = "http://10.0.0.5:8470/net.bin.gz"


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({"id": "d1", "url": URL}, "no sha256"),
        ({"id": "d1", "url": URL, "sha256": "xyz"}, "no sha256"),
        ({"url": URL, "sha256": SHA}, "bad or missing id"),
        ({"id": "a/b", "url": URL, "sha256": SHA}, "bad or missing id"),
        ({"id": "d1", "sha256": SHA}, "no url"),
        ({"id": "d1", "url": "ftp://h/net.bin.gz", "sha256": SHA}, "expected http://, https:// or file://"),
        ({"id": "d1", "url": "file://../net.bin.gz", "sha256": SHA}, "absolute path"),
        ({"id": "d1", "url": "http://h/passwd", "sha256": SHA}, "not a KataGo network file name"),
        ({"id": "d1", "url": URL, "sha256": SHA, "size": -1}, "size must be a positive integer"),
        ({"id": "d1", "url": URL, "sha256": SHA, "runtime": "cuda"}, "runtime must be one of"),
        ({"id": "d1", "url": URL, "sha256": SHA, "precision": "fp16"}, "precision needs a runtime"),
        ({"id": "d1", "action": "rollback", "sha256": SHA, "network": "n.bin.gz"}, "rollback_of"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_desired__refused_with_the_reason(doc: object, why: str) -> None:
    with pytest.raises(DeploymentError, match=why):
        parse_desired(json.dumps(doc).encode())


def test_desired__accepted_with_defaults_and_overrides() -> None:
    desired = parse_desired(
        json.dumps({"id": "d1", "url": URL, "sha256": SHA.upper(), "runtime": "onnx"}).encode()
    )
    assert desired is not None
    assert (desired.network, desired.sha256, desired.action) == ("net.bin.gz", SHA, "deploy")
    assert desired.overrides() == {"runtimes": [{"runtime": "onnx", "precision": "fp32"}]}
    assert parse_desired(b"") is None  # a withdrawn (cleared) desired state


def test_download__resumes_with_a_range_request__checks_sha256__limit(tmp_path: Path) -> None:
    source = tmp_path / "net.bin.gz"
    data = bytes(range(256)) * 4096  # 1 MiB
    source.write_bytes(data)
    server = ModelServer(source, "127.0.0.1", 0).start()
    stop = threading.Event()
    try:
        target = tmp_path / "store" / "net.bin.gz"
        part_path(target).parent.mkdir()
        part_path(target).write_bytes(data[:300_000])  # an interrupted download
        seen: list[tuple[int, int | None]] = []
        part = download(
            server.url, target, max_bytes=1 << 30, progress=lambda d, t: seen.append((d, t)), stop=stop
        )
        assert seen[0][0] > 300_000 and seen[-1] == (len(data), len(data))  # continued, not restarted
        placed = check_and_place(part, target, sha256_file(source), stop)
        assert placed.read_bytes() == data and not part.exists()

        other = tmp_path / "store" / "other.bin.gz"
        with pytest.raises(DeploymentError, match="over the limit of 100000 bytes"):
            download(server.url, other, max_bytes=100_000, progress=lambda d, t: None, stop=stop)
        with pytest.raises(
            DeploymentError, match=r"over the limit of 5000 bytes \(the size in the desired state"
        ):
            download(server.url, other, max_bytes=1 << 30, progress=lambda d, t: None, stop=stop, size=5000)

        part = download(server.url, other, max_bytes=1 << 30, progress=lambda d, t: None, stop=stop)
        with pytest.raises(DeploymentError, match="sha256 mismatch"):
            check_and_place(part, other, SHA, stop)
        assert not other.exists() and not part.exists()  # never placed, nothing left to load
    finally:
        server.close()
