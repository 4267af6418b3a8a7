"""``fetch-model``: paths, http(s) URLs with sha256, the katrain wheel route; atomic store writes."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import cli
from agent.errors import ModelStoreError
from agent.models.fetch import KATRAIN_MEMBER, fetch_model, model_store_dir
from agent.network.reader import read_network
from agent.network.writer import tiny_network, write_network


@pytest.fixture
def tiny_file(tmp_path: Path) -> Path:
    return write_network(tiny_network(15, seed=3), tmp_path / "src" / "tiny-net.bin.gz")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir() if p.name.startswith("."))


def test_fetch__path_is_copied_once_and_found_by_name(tmp_path: Path, tiny_file: Path) -> None:
    store = tmp_path / "store"
    got = fetch_model(tiny_file, store, sha256=_sha(tiny_file))
    assert got == store / "tiny-net.bin.gz" and got.read_bytes() == tiny_file.read_bytes()
    assert fetch_model(str(tiny_file), store=store) == got  # identical file: no second copy
    assert fetch_model("tiny-net", store) == got and fetch_model("tiny-net.bin.gz", store) == got
    assert _leftovers(store) == []


def test_fetch__sha_mismatch_and_non_network_leave_store_clean(tmp_path: Path, tiny_file: Path) -> None:
    store = tmp_path / "store"
    with pytest.raises(ModelStoreError, match="does not match the expected 00"):
        fetch_model(tiny_file, store, sha256="00" * 32)
    junk = tmp_path / "junk.bin.gz"
    junk.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ModelStoreError, match=r"junk\.bin\.gz is not a usable KataGo network: .*gzip"):
        fetch_model(junk, store)
    assert list(store.iterdir()) == []
    with pytest.raises(ModelStoreError, match="not found"):
        fetch_model("no-such-net", store)


def test_fetch__store_dir_follows_katago_edge_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KATAGO_EDGE_HOME", str(tmp_path / "home"))
    assert model_store_dir() == tmp_path / "home" / "models"
    monkeypatch.delenv("KATAGO_EDGE_HOME")
    assert model_store_dir() == Path.home() / ".local" / "share" / "katago-edge" / "models"


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_fetch__url_with_sha256(tmp_path: Path, tiny_file: Path, http_root: tuple[str, Path]) -> None:
    base, root = http_root
    (root / "net.bin.gz").write_bytes(tiny_file.read_bytes())
    store = tmp_path / "store"
    with pytest.raises(ModelStoreError, match="does not match"):
        fetch_model(f"{base}/net.bin.gz", store, sha256="ab" * 32)
    assert list(store.iterdir()) == []
    got = fetch_model(f"{base}/net.bin.gz", store, sha256=_sha(tiny_file))
    assert got.read_bytes() == tiny_file.read_bytes()
    with pytest.raises(ModelStoreError, match="failed: HTTP Error 404"):
        fetch_model(f"{base}/missing.bin.gz", store)
    with pytest.raises(ModelStoreError, match="does not name a KataGo network"):
        fetch_model(f"{base}/index.html", store)
    assert _leftovers(store) == []


def _fake_katrain_wheel(folder: Path, network: Path) -> None:
    folder.mkdir()
    dist = "katrain-1.20.0.dist-info"
    with zipfile.ZipFile(folder / "katrain-1.20.0-py3-none-any.whl", "w") as whl:
        whl.writestr("katrain/__init__.py", "")
        whl.write(network, KATRAIN_MEMBER)
        whl.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: katrain\nVersion: 1.20.0\n")
        whl.writestr(
            f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        whl.writestr(f"{dist}/RECORD", "")


def test_fetch__katrain_wheel_via_real_pip(tmp_path: Path, tiny_file: Path) -> None:
    """The registry route with real pip, from a local index standing in for PyPI (no 106 MB download)."""
    _fake_katrain_wheel(tmp_path / "index", tiny_file)
    store = tmp_path / "store"
    pip_args = ["--no-index", "--find-links", str(tmp_path / "index")]
    got = fetch_model("katrain", store, sha256=_sha(tiny_file), pip_args=pip_args)
    assert got == store / "b10c384h6nbttflrs.bin.gz" and got.read_bytes() == tiny_file.read_bytes()
    assert read_network(got).version == 15
    with pytest.raises(ModelStoreError, match=r"pip download katrain==9\.9 failed"):
        fetch_model("katrain==9.9", tmp_path / "other", pip_args=pip_args)


def test_fetch__cli_prints_stored_path(
    tmp_path: Path, tiny_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.run(["fetch-model", str(tiny_file), "--dest", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "s" / "tiny-net.bin.gz")
