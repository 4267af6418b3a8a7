"""``verify`` for Core ML: structural everywhere, numerical where Core ML can predict (macOS).

On Linux the numerical path runs with the prediction call faked at its one seam
(``CoreMLNet(predict=...)`` / ``run_coreml_conversion(predict=...)``): the fake evaluates the FP32
ONNX graph that the package was structurally checked against. Everything else is real: the
package is built and saved, the verification positions come from self-play, the report and the
manifest are the store's."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Built
from edge_fixtures import model_file

from agent.backends.base import NNInputs
from agent.backends.coreml.builder import MAX_BATCH
from agent.backends.coreml.runtime import CoreMLNet
from agent.backends.onnx.builder import OUTPUT_NAMES, build_onnx
from agent.backends.onnx.runtime import OnnxNet
from agent.errors import RuntimeUnavailable
from agent.models.coreml import NOT_RUN, run_coreml_conversion, tree_sha256
from agent.models.manifest import read_manifest
from agent.models.pipeline import ConvertJob
from agent.network.reader import read_network
from agent.progress import NO_PROGRESS

pytestmark = [pytest.mark.needs_models, pytest.mark.slow]


def _onnx_predict(
    path: Path, calls: list[int], value_shift: float = 0.0
) -> Callable[[dict[str, Any]], Mapping[str, Any]]:
    """A stand-in for ``MLModel.predict``: the FP32 ONNX graph of the same network."""
    onnx_net = OnnxNet(build_onnx(read_network(path)).SerializeToString(), intra_op_threads=1)

    def predict(feed: dict[str, Any]) -> Mapping[str, Any]:
        assert set(feed) == {"spatial", "global"}
        assert feed["spatial"].dtype == np.float32 and feed["spatial"].flags.c_contiguous
        calls.append(feed["spatial"].shape[0])
        out = onnx_net.evaluate(NNInputs(feed["spatial"], feed["global"]))
        result = {name: getattr(out, name) for name in OUTPUT_NAMES}
        result["value"] = result["value"] + np.array([value_shift, -value_shift, 0], np.float32)
        return result

    return predict


@pytest.mark.skipif(platform.system() == "Darwin", reason="Core ML can predict on macOS")
def test_coreml_runtime__default_prediction_is_unavailable_off_macos(
    coreml_package: Callable[[str, str], Built],
) -> None:
    with pytest.raises(RuntimeUnavailable, match="only on macOS"):
        CoreMLNet(coreml_package("b6c96", "fp16").path)


def test_coreml_runtime__evaluates_through_the_seam_in_batches(
    coreml_package: Callable[[str, str], Built], models_dir: Path
) -> None:
    b = coreml_package("b6c96", "fp16")
    calls: list[int] = []
    net = CoreMLNet(b.path, predict=_onnx_predict(model_file(models_dir, "b6c96"), calls))
    assert (net.info.name, net.info.precision, net.info.runtime) == (b.network.name, "fp16", "coreml")
    assert net.postprocess_params.to_dict() == b.network.postprocess.to_dict()
    rng = np.random.default_rng(3)
    n = MAX_BATCH + 6
    spatial = (rng.random((n, 22, 19, 19)) < 0.2).astype(np.float32)
    spatial[:, 0] = 1.0
    glob = rng.random((n, 19)).astype(np.float32)
    out = net.evaluate(NNInputs(spatial, glob))
    assert calls == [MAX_BATCH, 6]
    assert out.policy.shape == (n, b.network.policy_channels, 361)
    assert out.value.shape == (n, 3)


def test_coreml_verify__numerical_path_with_faked_prediction_passes(models_dir: Path, tmp_path: Path) -> None:
    path = model_file(models_dir, "b6c96")
    calls: list[int] = []
    output = tmp_path / "b6.fp32.mlpackage"
    job = ConvertJob(model=path, target="coreml", precision="fp32", output=output, verify_positions=16)
    report, written = run_coreml_conversion(job, NO_PROGRESS, predict=_onnx_predict(path, calls))
    assert written == output and output.is_dir()
    assert report.passed, report.failures
    assert report.metrics["numerical"] == "run"
    assert report.positions == 16 and sum(calls) == 16
    assert report.metrics["winrate_abs_error"]["max"] == 0.0  # the fake is the reference itself
    assert report.metrics["structural"]["passed"] is True
    manifest = read_manifest(output)
    assert manifest is not None and manifest.format == "coreml"
    assert manifest.sha256 == tree_sha256(output)
    assert manifest.verification is not None and manifest.verification["positions"] == 16
    assert "16 positions: winrate" in report.summary()


def test_coreml_verify__numerical_failure_refuses_and_writes_nothing(
    models_dir: Path, tmp_path: Path
) -> None:
    path = model_file(models_dir, "b6c96")
    output = tmp_path / "b6.fp32.mlpackage"
    job = ConvertJob(model=path, target="coreml", precision="fp32", output=output, verify_positions=16)
    report, written = run_coreml_conversion(
        job, NO_PROGRESS, predict=_onnx_predict(path, [], value_shift=0.5)
    )
    assert written is None
    assert not report.passed
    assert report.metrics["structural"]["passed"] is True  # the package is right, its outputs are not
    assert any(f.startswith("winrate_abs_error") for f in report.failures), report.failures
    assert not output.exists()
    assert list(tmp_path.iterdir()) == []  # the staging folder is gone too


@pytest.mark.skipif(platform.system() == "Darwin", reason="Core ML can predict on macOS")
def test_coreml_cli__convert_stores_and_verify_checks_structure(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli.main import run

    path = model_file(models_dir, "b6c96")
    out = tmp_path / "b6.int8.mlpackage"
    store = tmp_path / "store"
    args = ["convert", str(path), "--to", "coreml", "--precision", "int8", "--store", str(store)]
    assert run([*args, "-o", str(out)]) == 0
    printed = capsys.readouterr()
    assert "structural check: 136 ops" in printed.out
    assert NOT_RUN in printed.out
    data = json.loads((tmp_path / "b6.int8.mlpackage.manifest.json").read_text())
    assert data["format"] == "coreml" and data["precision"] == "int8"
    assert data["size_bytes"] == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert data["op_counts"]["conv"] == 20 and data["op_counts"]["constexpr_affine_dequantize"] == 14
    assert data["verification"]["passed"] is True and data["verification"]["positions"] == 0
    assert data["verification"]["numerical"] == NOT_RUN
    stored = list((store / "coreml").glob("*.mlpackage"))
    assert len(stored) == 1 and tree_sha256(stored[0]) == data["sha256"] == tree_sha256(out)
    # the second time it comes from the store (the package tree's hash matches its manifest)
    assert run([*args, "-o", str(tmp_path / "again.mlpackage")]) == 0
    assert "already in the model store" in capsys.readouterr().err
    assert run(["verify", str(out), "--reference", str(path)]) == 0
    printed = capsys.readouterr()
    assert "Core ML cannot run models on this machine" in printed.err
    assert "-> PASSED" in printed.out
    # without --precision, Core ML is FP16
    default = tmp_path / "b6.default.mlpackage"
    assert run(["convert", str(path), "--to", "coreml", "--store", str(store), "-o", str(default)]) == 0
    default_manifest = read_manifest(default)
    assert default_manifest is not None and default_manifest.precision == "fp16"
    capsys.readouterr()
    # the store lists the packages with their size and removes them whole
    from agent.models.store import ModelStore

    model_store = ModelStore(store)
    entry = next(e for e in model_store.entries() if e.precision == "int8")
    assert (entry.kind, entry.runtime, entry.precision) == ("artifact", "coreml", "int8")
    assert entry.size == data["size_bytes"]
    model_store.remove(entry)
    assert [e.precision for e in model_store.entries()] == ["fp16"]
    assert len(list((store / "coreml").iterdir())) == 2  # the FP16 package and its manifest
