"""TensorRT engine building and caching.

TensorRT cannot exist on a machine without an NVIDIA GPU, so the builder is driven here through a
recording stand-in for the ``tensorrt`` module (the one place the project fakes a dependency).
What is checked is ours: the flags and optimization profile we ask for, the cache key, rebuilds
when the key changes, atomic files, and the errors.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

from agent.backends.tensorrt import builder as tb
from agent.errors import ConversionError, RuntimeUnavailable


class _Recorder:
    def __init__(self, parse_ok: bool = True, build_ok: bool = True) -> None:
        self.parse_ok = parse_ok
        self.build_ok = build_ok
        self.flags: list[str] = []
        self.shapes: dict[str, tuple[Any, ...]] = {}
        self.pool: int | None = None
        self.builds = 0

    def module(self, version: str = "10.3.0") -> types.SimpleNamespace:
        rec = self

        class Input:
            def __init__(self, name: str) -> None:
                self.name = name

        class Network:
            num_inputs = 2

            def get_input(self, i: int) -> Input:
                return Input(("spatial", "global")[i])

        class Parser:
            num_errors = 1

            def __init__(self, network: Network, logger: object) -> None:
                pass

            def parse(self, data: bytes) -> bool:
                return rec.parse_ok

            def get_error(self, i: int) -> str:
                return "node 3: unsupported op"

        class Profile:
            def set_shape(
                self, name: str, lo: tuple[int, ...], opt: tuple[int, ...], hi: tuple[int, ...]
            ) -> None:
                rec.shapes[name] = (lo, opt, hi)

        class Config:
            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                rec.pool = size

            def set_flag(self, flag: str) -> None:
                rec.flags.append(flag)

            def add_optimization_profile(self, profile: Profile) -> None:
                pass

        class Builder:
            def __init__(self, logger: object) -> None:
                pass

            def create_network(self, flags: int) -> Network:
                return Network()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
                rec.builds += 1
                return b"ENGINE" if rec.build_ok else None

        class Logger:
            WARNING = 2

            def __init__(self, level: int) -> None:
                pass

        return types.SimpleNamespace(
            __version__=version,
            Logger=Logger,
            Builder=Builder,
            OnnxParser=Parser,
            MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
            BuilderFlag=types.SimpleNamespace(FP16="FP16", INT8="INT8"),
        )


@pytest.fixture()
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "net.onnx"
    path.write_bytes(b"onnx-model-bytes")
    return path


def test_ensure_engine__builds_with_flags_and_profile(tmp_path: Path, onnx_file: Path) -> None:
    rec = _Recorder()
    settings = tb.BuildSettings(precision="int8", max_batch=16, opt_batch=8, workspace_mb=512)
    path = tb.ensure_engine(
        onnx_file, tmp_path / "cache", settings, trt=rec.module(), identity=("Orin", "8.7")
    )
    assert path.read_bytes() == b"ENGINE"
    assert rec.flags == ["FP16", "INT8"]
    assert rec.pool == 512 << 20
    assert rec.shapes["spatial"] == ((1, 22, 19, 19), (8, 22, 19, 19), (16, 22, 19, 19))
    assert rec.shapes["global"] == ((1, 19), (8, 19), (16, 19))
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["key"]["gpu_name"] == "Orin" and meta["key"]["compute_capability"] == "8.7"
    assert meta["key"]["tensorrt_version"] == "10.3.0" and meta["key"]["precision"] == "int8"


def test_ensure_engine__cache_hit_then_rebuild_when_key_changes(tmp_path: Path, onnx_file: Path) -> None:
    rec = _Recorder()
    cache = tmp_path / "cache"
    settings = tb.BuildSettings(precision="fp16")
    first = tb.ensure_engine(onnx_file, cache, settings, trt=rec.module(), identity=("Orin", "8.7"))
    again = tb.ensure_engine(onnx_file, cache, settings, trt=rec.module(), identity=("Orin", "8.7"))
    assert first == again and rec.builds == 1
    upgraded = tb.ensure_engine(
        onnx_file, cache, settings, trt=rec.module("10.7.0"), identity=("Orin", "8.7")
    )
    assert upgraded != first and rec.builds == 2
    assert not first.exists(), "the stale engine is removed"
    onnx_file.write_bytes(b"another network")
    renet = tb.ensure_engine(onnx_file, cache, settings, trt=rec.module("10.7.0"), identity=("Orin", "8.7"))
    assert renet != upgraded and rec.builds == 3
    assert sorted(p.name for p in cache.glob("*.engine")) == [renet.name]


@pytest.mark.parametrize(
    ("recorder", "message"),
    [
        (_Recorder(parse_ok=False), "could not parse the ONNX model: node 3"),
        (_Recorder(build_ok=False), "failed"),
    ],
)
def test_ensure_engine__errors_leave_no_file(
    tmp_path: Path, onnx_file: Path, recorder: _Recorder, message: str
) -> None:
    with pytest.raises(ConversionError, match=message):
        tb.ensure_engine(
            onnx_file, tmp_path / "c", tb.BuildSettings(), trt=recorder.module(), identity=("X", "7.2")
        )
    assert not list(tmp_path.glob("c/*"))


def test_build_settings__rejects_bad_values() -> None:
    with pytest.raises(ConversionError, match="precision 'int4'"):
        tb.BuildSettings(precision="int4")
    with pytest.raises(ConversionError, match="opt_batch"):
        tb.BuildSettings(max_batch=4, opt_batch=8)


def test_import_tensorrt__missing_names_where_it_comes_from(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(RuntimeUnavailable, match="JetPack"):
        tb.import_tensorrt()
