"""What serves, through the real entry points: every shipped profile started by `serve`, each
ONNX/TFLite x FP32/FP16/INT8 entry forced through the config, converted files given to `serve`
and `analysis`, a second start from the cache, and `bench --apply` accepted by `serve`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from daemon_support import REPO, ServeProcess, base_env, socket_request
from edge_fixtures import model_file

from agent.app.config import load_config
from agent.app.startup import build_engine, make_plan
from agent.protocol.service import analysis_query

pytestmark = [pytest.mark.needs_models, pytest.mark.slow]

PROFILES = sorted(p.stem for p in (REPO / "profiles").glob("*.toml"))
QUERY = {
    "id": "q",
    "moves": [["B", "D4"]],
    "rules": "japanese",
    "komi": 6.5,
    "boardXSize": 9,
    "boardYSize": 9,
}
GPU_FALLBACKS = [
    ("tensorrt", "fp16", None, "not installed"),
    ("onnx", "fp16", "TensorrtExecutionProvider", "has no TensorrtExecutionProvider"),
    ("onnx", "fp16", "CUDAExecutionProvider", "has no CUDAExecutionProvider"),
]
JETSON_FALLBACKS = [GPU_FALLBACKS[0], GPU_FALLBACKS[2]]
# What serves each profile on this machine (x86-64, onnxruntime CPU + LiteRT, no GPU, the katrain
# KataGo binary): (runtime, precision, fallbacks as (runtime, precision, provider, reason part)).
EXPECTED: dict[str, tuple[str, str | None, list[tuple[str, str, str | None, str]]]] = {
    "android-arm64": ("tflite", "fp16", []),
    "arm64": ("onnx", "fp32", []),
    "jetson-agx-orin": ("onnx", "fp32", JETSON_FALLBACKS),
    "jetson-nano": ("katago", None, []),
    "jetson-orin-nano-nx": ("onnx", "fp32", JETSON_FALLBACKS),
    "jetson-xavier": ("onnx", "fp32", JETSON_FALLBACKS),
    "raspberry-pi-3": ("onnx", "fp32", []),
    "raspberry-pi-4": ("onnx", "fp32", []),
    "raspberry-pi-5": ("onnx", "fp32", []),
    "raspberry-pi-zero-2": ("onnx", "fp32", []),
    "x86-64": ("onnx", "fp32", []),
    "x86-64-nvidia": ("onnx", "fp32", GPU_FALLBACKS),
}


def _env(store: Path, tmp: Path) -> dict[str, str]:
    return base_env(
        KATAGO_EDGE_ARTIFACT_STORE=str(store),
        KATAGO_EDGE_STATE_DIR=str(tmp / "state"),
    )


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli.main", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _start(tmp: Path, store: Path, *args: str) -> tuple[ServeProcess, Path]:
    sock = tmp / "agent.sock"
    proc = ServeProcess(
        [*args, "--broker", "none", "--socket", str(sock), "--websocket", "none"],
        _env(store, tmp),
        tmp / "serve.log",
    )
    deadline = time.monotonic() + 540
    while not sock.exists():
        if proc.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"serve never listened:\n{proc.text()}")
        time.sleep(0.1)
    return proc, sock


def test_serve__every_profile_serves_what_it_can_and_says_why(
    models_dir: Path, model_store: Any, short_tmp: Path
) -> None:
    """Each shipped profile forced on this machine: a real daemon start, a real query answered,
    and `katago-edge status` (the daemon's health over its socket) naming what serves and every
    fallback with its reason. One test for all profiles: they share the run's model store."""
    assert sorted(EXPECTED) == PROFILES  # a new profile needs its expectation here
    model = str(model_file(models_dir, "b6c96"))
    for name in PROFILES:
        tmp = short_tmp / name
        tmp.mkdir()
        proc, sock = _start(tmp, model_store.root, "--profile", name, "--model", model)
        try:
            answer = socket_request(sock, {**QUERY, "maxVisits": 4}, timeout=120)
            assert answer[-1]["isDuringSearch"] is False and answer[-1]["rootInfo"]["visits"] >= 4, name
            status = _cli("status", "--socket", str(sock), "--json", env=_env(model_store.root, tmp))
            human = _cli("status", "--socket", str(sock), env=_env(model_store.root, tmp))
        finally:
            code = proc.stop()
        assert code == 0, proc.text()
        health = json.loads(status.stdout)
        runtime, precision, fallbacks = EXPECTED[name]
        network = health["network"]
        assert health["agent"]["profile"] == name
        assert (network["serving"]["runtime"], network["serving"]["precision"]) == (runtime, precision), name
        got = [(f["runtime"], f["precision"], f["provider"], f["reason"]) for f in network["fallbacks"]]
        assert [g[:3] for g in got] == [f[:3] for f in fallbacks], (name, got)
        assert all(part in g[3] for g, (*_, part) in zip(got, fallbacks, strict=True)), (name, got)
        assert status.returncode == (3 if fallbacks else 0), (name, status.stderr)
        assert ("FALLBACK" in human.stdout) == bool(fallbacks), human.stdout
        if runtime == "katago":
            assert network["serving"]["file"].endswith(".bin.gz")
        elif runtime != "numpy":
            served = Path(network["serving"]["file"])
            assert served.parent == model_store.root / runtime and served.is_file(), name
            assert network["serving"]["verify"]["status"] == "passed"
            assert network["requested"]["runtime"] == (fallbacks[0][0] if fallbacks else runtime)
        if fallbacks:
            assert "serving with a FALLBACK" in proc.text()


ENTRIES = [(r, p) for r in ("onnx", "tflite") for p in ("fp32", "fp16", "int8")]


@pytest.mark.parametrize(("runtime", "precision"), ENTRIES, ids=[f"{r}-{p}" for r, p in ENTRIES])
def test_serve__each_entry_forced_by_the_config_serves_its_own_artifact(
    runtime: str, precision: str, models_dir: Path, model_store: Any, tmp_path: Path
) -> None:
    """The daemon's start-up (plan + engine) with ``[overrides] runtimes`` naming one entry: it
    serves from that entry's artifact, or, where verification refuses the conversion (INT8 that
    misses its limits), falls back to the reference and says which metric failed."""
    config_file = tmp_path / "agent.toml"
    config_file.write_text(
        f'profile = "x86-64"\nmodel = "{model_file(models_dir, "b6c96")}"\n'
        f'artifact_store = "{model_store.root}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[overrides]\nruntimes = [{{ runtime = "{runtime}", precision = "{precision}" }}]\n'
    )
    config = load_config(config_file)
    plan = make_plan(config)
    assert [e.label for e in plan.runtimes] == [f"{runtime}/{precision}", "numpy/fp32"]
    engine, report = build_engine(config, plan, lambda _text: None)
    try:
        assert report is not None
        serving = report.serving
        if report.fallbacks:  # only a refused INT8 conversion may fall back here
            assert precision == "int8" and serving["runtime"] == "numpy"
            (fallback,) = report.fallbacks
            assert "refused by verification" in fallback["reason"] and "needs" in fallback["reason"]
            assert model_store.refusal(Path(config.model or ""), _recipe(runtime, precision)) is not None
        else:
            assert (serving["runtime"], serving["precision"]) == (runtime, precision)
            assert Path(serving["file"]).parent == model_store.root / runtime
            assert serving["verify"]["status"] == "passed" and serving["verify"]["positions"] >= 16
        responses: list[dict[str, Any]] = []
        engine.submit(analysis_query({**QUERY, "maxVisits": 3}, engine.default_params), responses.append)
        deadline = time.monotonic() + 120
        while not any(r.get("isDuringSearch") is False for r in responses):
            assert time.monotonic() < deadline, responses
            time.sleep(0.05)
        assert responses[-1]["rootInfo"]["visits"] >= 3
    finally:
        engine.close(5.0)


def _recipe(runtime: str, precision: str) -> Any:
    from agent.models.store import Recipe

    return Recipe(runtime, precision)


def test_serve_and_analysis__answer_from_converted_files_given_directly(
    models_dir: Path, model_store: Any, short_tmp: Path
) -> None:
    """`.onnx` and `.tflite` files (with the manifest `convert` writes beside them) served as
    they are; a second `serve` of the .bin.gz loads its cached artifact without rebuilding."""
    source = model_file(models_dir, "b6c96")
    files = []
    for runtime in ("onnx", "tflite"):
        out = short_tmp / f"b6.{runtime}"
        env = _env(model_store.root, short_tmp)
        done = _cli("convert", str(source), "--to", runtime, "-o", str(out), env=env)
        assert done.returncode == 0, done.stderr
        assert (short_tmp / f"b6.{runtime}.manifest.json").is_file()
        files.append(out)
    for path in files:
        analysed = subprocess.run(
            [sys.executable, "-m", "agent.cli.main", "analysis", "-model", str(path)],
            input=json.dumps({**QUERY, "maxVisits": 5}) + "\n",
            env=_env(model_store.root, short_tmp),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert analysed.returncode == 0, analysed.stderr
        final = json.loads(analysed.stdout.splitlines()[-1])
        assert final["id"] == "q" and final["rootInfo"]["visits"] >= 5, analysed.stdout
        tmp = short_tmp / path.suffix[1:]
        tmp.mkdir()
        proc, sock = _start(tmp, model_store.root, "--model", str(path), "--profile", "x86-64")
        try:
            answer = socket_request(sock, {**QUERY, "maxVisits": 4}, timeout=120)
            health = json.loads(
                _cli("status", "--socket", str(sock), "--json", env=_env(model_store.root, tmp)).stdout
            )
        finally:
            assert proc.stop() == 0, proc.text()
        assert answer[-1]["rootInfo"]["visits"] >= 4
        assert health["network"]["serving"]["file"] == str(path)
        assert health["network"]["serving"]["runtime"] == path.suffix[1:]
    tmp = short_tmp / "again"
    tmp.mkdir()
    proc, sock = _start(tmp, model_store.root, "--model", str(source), "--profile", "x86-64")
    try:
        socket_request(sock, {**QUERY, "maxVisits": 2}, timeout=60)
    finally:
        assert proc.stop() == 0
    assert "model store: using" in proc.text() and "model store: built" not in proc.text()


def test_bench_apply__writes_what_check_config_and_serve_accept(
    models_dir: Path, model_store: Any, short_tmp: Path
) -> None:
    config = short_tmp / "agent.toml"
    config.write_text(f'model = "{model_file(models_dir, "b6c96")}"\n')
    env = _env(model_store.root, short_tmp)
    bench = _cli(
        "bench", "--model", str(model_file(models_dir, "b6c96")), "--config", str(config), "--runtimes", "onnx",
        "--precisions", "fp32", "--batches", "1", "--threads", "1", "--reps", "2", "--no-search", "--no-e2e",
        "--apply", env=env,
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    text = config.read_text()
    assert 'runtime = "onnx"' in text and "[overrides]" in text
    assert tomllib.loads(text)["overrides"]["search"] == {"runtime_threads": 1, "batch_size": 1}
    checked = _cli("check-config", str(config), env=env)
    assert checked.returncode == 0, checked.stderr
    assert f"ok  config {config}" in checked.stdout
    tmp = short_tmp / "applied"
    tmp.mkdir()
    proc, sock = _start(tmp, model_store.root, "--config", str(config), "--profile", "x86-64")
    try:
        health = json.loads(
            _cli("status", "--socket", str(sock), "--json", env=_env(model_store.root, tmp)).stdout
        )
    finally:
        assert proc.stop() == 0, proc.text()
    assert health["network"]["requested"]["runtime"] == "onnx"
    assert health["network"]["serving"]["runtime"] == "onnx" and not health["network"]["fallbacks"]
    assert (health["agent"]["runtime_threads"], health["agent"]["batch_size"]) == (1, 1)  # as applied
    # the chosen variant first, the profile's other entries behind it: still a fallback chain
    assert health["agent"]["runtimes"][0] == "onnx/fp32" and health["agent"]["runtimes"][-1] == "numpy/fp32"
    assert len(health["agent"]["runtimes"]) == len(set(health["agent"]["runtimes"])) >= 2


def test_status__says_clearly_when_no_daemon_listens(short_tmp: Path) -> None:
    done = _cli("status", "--socket", str(short_tmp / "nothing.sock"), env=base_env())
    assert done.returncode == 1
    assert "cannot reach the daemon at" in done.stderr and "is it running?" in done.stderr
