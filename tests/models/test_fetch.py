"""``fetch-model``: paths, http(s) URLs with sha256, the katrain wheel route; atomic store writes."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import main as cli
from agent.cli.fetch_model import agent_model_store
from agent.errors import ConfigError, ModelStoreError
from agent.models.fetch import KATRAIN_MEMBER, fetch_model
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


def test_fetch__default_store_is_the_agent_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One default: ``AgentConfig.model_store_dir`` of the config ``serve`` would read."""
    monkeypatch.delenv("CONFIGURATION_DIRECTORY", raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr("agent.app.config.DEFAULT_CONFIG_PATHS", (tmp_path / "etc/katago-edge/agent.toml",))
    assert agent_model_store() == (tmp_path / "xdg/katago-edge/models", None)  # no config file anywhere
    installed = tmp_path / "etc/katago-edge/agent.toml"  # what install.sh writes
    installed.parent.mkdir(parents=True)
    installed.write_text(f'state_dir = "{tmp_path}/var/lib/katago-edge"\n')
    assert agent_model_store() == (tmp_path / "var/lib/katago-edge/models", installed)
    unit_conf = tmp_path / "unit-conf" / "agent.toml"  # systemd's ConfigurationDirectory= comes first
    unit_conf.parent.mkdir()
    unit_conf.write_text(f'model_store = "{tmp_path}/nets"\n')
    monkeypatch.setenv("CONFIGURATION_DIRECTORY", str(unit_conf.parent))
    assert agent_model_store() == (tmp_path / "nets", unit_conf)
    assert agent_model_store(installed) == (tmp_path / "var/lib/katago-edge/models", installed)
    monkeypatch.delenv("CONFIGURATION_DIRECTORY")
    # install.sh's config is root:katago-edge 0640: a plain user is told to use sudo, not a wrong store
    real_access = os.access
    monkeypatch.setattr(
        "agent.models.fetch.os.access", lambda p, mode: Path(p) != installed and real_access(p, mode)
    )
    with pytest.raises(
        ConfigError, match=rf"cannot read {installed}, .*: run as root \(sudo katago-edge fetch-model"
    ):
        agent_model_store()
    assert agent_model_store(installed)[0] == tmp_path / "var/lib/katago-edge/models"  # named: just read


def test_fetch__cli_stores_where_the_installed_agent_looks_and_says_how_to_serve_it(
    tmp_path: Path, tiny_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "etc/katago-edge/agent.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'state_dir = "{tmp_path}/var/lib/katago-edge"\n')
    monkeypatch.delenv("CONFIGURATION_DIRECTORY", raising=False)
    monkeypatch.setattr("agent.app.config.DEFAULT_CONFIG_PATHS", (config,))
    stored = tmp_path / "var/lib/katago-edge/models/tiny-net.bin.gz"
    for args in ([], ["--config", str(config)]):
        assert cli.run(["fetch-model", str(tiny_file), *args]) == 0
        out, err = capsys.readouterr()
        assert out == f"{stored}\n"
        assert stored.read_bytes() == tiny_file.read_bytes()
        assert err.splitlines()[-2:] == [
            f"stored in {stored.parent} (the model store of {config})",
            f'to serve it: set model = "{stored}" in {config}, then reload the agent '
            f"(`systemctl reload katago-edge` or SIGHUP); or run `katago-edge serve --model {stored}`",
        ]
    # the agent started with this config finds it by name too (serve's own lookup)
    from agent.app.config import load_config

    assert fetch_model("tiny-net", store=load_config(config).model_store_dir) == stored
    # --dest elsewhere: stored there, and told that the agent does not look there
    assert cli.run(["fetch-model", str(tiny_file), "--dest", str(tmp_path / "elsewhere")]) == 0
    out, err = capsys.readouterr()
    assert out == f"{tmp_path / 'elsewhere' / 'tiny-net.bin.gz'}\n"
    assert (
        err.splitlines()[-2]
        == f"stored in {tmp_path / 'elsewhere'}: not where the agent looks ({stored.parent})"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the case is `sudo katago-edge fetch-model`")
def test_fetch__as_root_the_file_belongs_to_the_state_folders_owner(
    tmp_path: Path, tiny_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "var/lib/katago-edge"
    state.mkdir(parents=True)
    os.chown(state, 65534, 65534)  # the service user's state folder
    config = tmp_path / "agent.toml"
    config.write_text(f'state_dir = "{state}"\n')
    monkeypatch.delenv("CONFIGURATION_DIRECTORY", raising=False)
    assert cli.run(["fetch-model", str(tiny_file), "--config", str(config)]) == 0
    stored = state / "models" / "tiny-net.bin.gz"
    assert (stored.stat().st_uid, stored.parent.stat().st_uid) == (65534, 65534)
    # --dest is the operator's own choice: left as created
    assert cli.run(["fetch-model", str(tiny_file), "--dest", str(tmp_path / "mine")]) == 0
    assert (tmp_path / "mine" / "tiny-net.bin.gz").stat().st_uid == 0


def test_fetch__missing_file_under_tmp_under_systemd_says_the_unit_hides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = Path("/tmp/katago-edge-test-absent/net.bin.gz")
    monkeypatch.setenv("INVOCATION_ID", "0123")  # what systemd sets for a unit's processes
    with pytest.raises(
        ModelStoreError, match=r"under /tmp, which the katago-edge service does not see \(PrivateTmp"
    ):
        fetch_model(missing, tmp_path / "store")
    monkeypatch.delenv("INVOCATION_ID")
    with pytest.raises(ModelStoreError) as plain:
        fetch_model(missing, tmp_path / "store")
    assert "service" not in str(plain.value)


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


def test_fetch__offline_failure_says_which_file_goes_where(tmp_path: Path, tiny_file: Path) -> None:
    """No internet: the error names the file the agent looks for, its folder, and the local-file way."""
    with socket.socket() as probe:  # a port nothing listens on: the download is refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = tmp_path / "var/lib/katago-edge/models"
    url = f"http://127.0.0.1:{port}/g170-b6c96-s175395328-d26788732.bin.gz"
    with pytest.raises(ModelStoreError) as info:
        fetch_model(url, store)
    assert str(info.value).startswith(
        f"downloading {url} failed: <urlopen error [Errno 111] Connection refused>; "
    )
    assert str(info.value).endswith(
        f"without internet here, bring the network over: put g170-b6c96-s175395328-d26788732.bin.gz "
        f"into {store} (where the agent looks; `katago-edge fetch-model {url}` on a machine with internet "
        "prints where it stored it), or use a local .bin.gz file: `--model PATH` (install.sh, serve) or "
        'model = "PATH" in the agent config'
    )
    # following the advice works: the file put there is used, nothing is downloaded
    (store / "g170-b6c96-s175395328-d26788732.bin.gz").write_bytes(tiny_file.read_bytes())
    assert fetch_model(url, store) == store / "g170-b6c96-s175395328-d26788732.bin.gz"
    # the katrain route (pip download) says the same with the name the katrain network gets
    empty_index = ["--no-index", "--find-links", str(tmp_path)]
    with pytest.raises(ModelStoreError, match=r"pip download katrain failed \(exit 1\)") as info:
        fetch_model("katrain", store, pip_args=empty_index)
    assert f"put b10c384h6nbttflrs.bin.gz into {store} (where the agent looks; " in str(info.value)
    assert "`katago-edge fetch-model katrain` on a machine with internet" in str(info.value)
