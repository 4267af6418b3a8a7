"""The model store with a real network (g170-b6c96): build once, cache by key, manifests,
cached refusals, converted files given directly, and the `models` command."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

import pytest
from edge_fixtures import model_file

from agent.cli.main import run
from agent.fsutil import file_lock
from agent.models.manifest import read_manifest
from agent.models.pipeline import open_converted
from agent.models.store import BUILD_LOCK, ONNX_INT8_GRAPH, Artifact, ModelStore, Recipe, VerificationRefused

pytestmark = pytest.mark.needs_models

# top-1 agreement can never exceed 1: a threshold verification must refuse
IMPOSSIBLE = (("policy_top1_agreement", ">=", 1.01),)


def test_store__builds_once_verifies_and_reuses_by_key(models_dir: Path, tmp_path: Path) -> None:
    source = model_file(models_dir, "b6c96")
    store = ModelStore(tmp_path / "store")
    first = store.prepare(source, Recipe("onnx", "fp16", verify_positions=24))
    assert first.built_now and first.path.parent == store.root / "onnx"
    assert first.path.name.startswith("g170-b6c96-s175395328-d26788732-fp16-")
    manifest = read_manifest(first.path)
    assert manifest is not None and manifest.sha256 == first.sha256
    assert manifest.source["sha256"].startswith("f5d32604e3675c48")
    assert manifest.extra["postprocess"]["model_version"] == 8
    assert manifest.extra["recipe"]["precision"] == "fp16"
    assert manifest.extra["recipe"]["thresholds"]["winrate_abs_error.p99"] == ["<", 0.01]
    assert manifest.extra["key"] in first.path.name
    assert set(manifest.extra["timings"]) >= {"read_and_build_fp32_s", "verify_s"}
    assert manifest.verification is not None and manifest.verification["passed"] is True
    assert manifest.verification["positions"] == 24
    assert first.verify == {"status": "passed", "positions": 24, "failures": []}
    mtime = first.path.stat().st_mtime_ns

    again = store.prepare(source, Recipe("onnx", "fp16", verify_positions=24))
    assert not again.built_now and again.path == first.path and first.path.stat().st_mtime_ns == mtime
    other = store.artifact_path(source, Recipe("onnx", "fp16", verify_positions=30))
    assert other != first.path  # another verification setting is another artifact
    net = store.open(again, threads=1)
    assert (net.info.runtime, net.info.precision) == ("onnx", "fp16")
    assert net.postprocess_params.model_version == 8
    assert [e.kind for e in store.entries()] == ["artifact"]


def test_store__a_build_waits_for_another_process_holding_the_store_lock(
    models_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = model_file(models_dir, "b6c96")
    store = ModelStore(tmp_path / "store")
    built: list[Artifact] = []
    caplog.set_level(logging.INFO, logger="agent.models.store")
    with file_lock(store.root / BUILD_LOCK):  # another process (its own open file) is building
        worker = threading.Thread(target=lambda: built.append(store.prepare(source, Recipe("onnx", "fp32"))))
        worker.start()
        deadline = time.monotonic() + 60
        while "waiting for another process's build" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "waiting for another process's build" in caplog.text
        time.sleep(0.3)
        assert worker.is_alive() and not built and not list(store.root.glob("onnx/*.onnx"))
    worker.join(120)
    assert len(built) == 1 and built[0].built_now and built[0].path.is_file()
    again = ModelStore(store.root).prepare(source, Recipe("onnx", "fp32"))  # a later process: no rebuild
    assert not again.built_now and again.path == built[0].path


def test_store__a_file_that_lost_its_manifest_is_rebuilt(models_dir: Path, tmp_path: Path) -> None:
    source = model_file(models_dir, "b6c96")
    store = ModelStore(tmp_path)
    artifact = store.prepare(source, Recipe("onnx", "fp32"))
    artifact.path.with_name(artifact.path.name + ".manifest.json").unlink()
    assert [e.kind for e in store.entries()] == ["incomplete"]
    assert store.cached(source, Recipe("onnx", "fp32")) is None
    rebuilt = store.prepare(source, Recipe("onnx", "fp32"))
    assert rebuilt.built_now and rebuilt.path == artifact.path


def test_store__refusal_is_kept_with_its_reason_and_prune_forgets_it(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = model_file(models_dir, "b6c96")
    store = ModelStore(tmp_path)
    recipe = Recipe("onnx", "fp16", verify_positions=16, thresholds=IMPOSSIBLE)
    with pytest.raises(
        VerificationRefused, match=r"onnx/fp16 refused by verification: policy_top1_agreement"
    ):
        store.prepare(source, recipe)
    target = store.artifact_path(source, recipe)
    assert not target.exists()  # nothing servable was written
    refusal = store.refusal(source, recipe)
    assert refusal is not None and "policy_top1_agreement" in refusal["reason"]
    assert refusal["verification"]["passed"] is False

    def no_second_conversion(*_args: object, **_kw: object) -> Artifact:
        raise AssertionError("converted again despite the cached refusal")

    monkeypatch.setattr(store, "_build", no_second_conversion)
    with pytest.raises(VerificationRefused, match="cached refusal") as cached:
        store.prepare(source, recipe)
    assert cached.value.report.failures and cached.value.report.positions == 16

    capsys.readouterr()
    assert run(["models", "list", "--store", str(tmp_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["kind"], e["runtime"], e["precision"]) for e in listed] == [("refused", "onnx", "fp16")]
    assert "policy_top1_agreement" in listed[0]["reason"]
    assert run(["models", "prune", "--store", str(tmp_path)]) == 0
    assert store.refusal(source, recipe) is not None  # a plain prune keeps refusals
    assert run(["models", "prune", "--refused", "--store", str(tmp_path)]) == 0
    assert store.refusal(source, recipe) is None and store.entries() == []


def test_store__models_command_lists_and_shows_an_artifact(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = ModelStore(tmp_path).prepare(model_file(models_dir, "b6c96"), Recipe("onnx", "fp32"))
    capsys.readouterr()
    assert run(["models", "list", "--store", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert artifact.path.name.split(".")[0] in table and "passed" in table and "1 entries" in table
    ident = artifact.path.name.split(".")[0]
    assert run(["models", "show", ident[:30], "--store", str(tmp_path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["sha256"] == artifact.sha256 and shown["postprocess"]["policy_channels"] == 1
    assert run(["models", "show", "nothing-like-this", "--store", str(tmp_path)]) == 1
    assert "no store entry matches 'nothing-like-this'" in capsys.readouterr().err
    assert run(["models", "prune", "--all", "--store", str(tmp_path)]) == 0
    assert ModelStore(tmp_path).entries() == []


def test_store__converted_files_given_directly_carry_their_post_processing(
    models_dir: Path, model_store: ModelStore, tmp_path: Path
) -> None:
    """A .tflite carries its post-processing in its own metadata (the writer puts it there) and in
    the manifest beside it; either is enough to answer queries."""
    artifact = model_store.prepare(model_file(models_dir, "b6c96"), Recipe("tflite", "fp32"))
    given = tmp_path / "mine.tflite"
    shutil.copyfile(artifact.path, given)
    bare = open_converted(given, threads=1)  # no manifest: the file's metadata
    assert bare.info.runtime == "tflite" and bare.postprocess_params.model_version == 8
    manifest = artifact.path.with_name(artifact.path.name + ".manifest.json")
    shutil.copyfile(manifest, tmp_path / "mine.tflite.manifest.json")
    net = open_converted(given, threads=1)
    assert net.postprocess_params == bare.postprocess_params
    assert net.info.name == "g170-b6c96-s175395328-d26788732"


def test_recipe__onnx_int8_key_names_how_the_graph_is_built() -> None:
    """A store built before the im2col INT8 graph, or before verification-driven escalation
    (``im2col-3``: a cached refusal is retried), rebuilds its ONNX INT8 artifacts (new key);
    other recipes keep their keys."""
    assert Recipe("onnx", "int8").describe()["onnx_int8_graph"] == ONNX_INT8_GRAPH == "im2col-3"
    for recipe in (Recipe("onnx", "fp32"), Recipe("onnx", "fp16"), Recipe("tflite", "int8")):
        assert "onnx_int8_graph" not in recipe.describe()
