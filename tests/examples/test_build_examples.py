"""``squishy build-examples``: a servable repository of models of different cost, built reproducibly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from squishy.cli import main
from squishy.examples import build_examples
from squishy.examples.build import STAMP_FILE
from squishy.examples.ocr import models_dir
from squishy.runtime.executors import make_executor
from squishy.runtime.repository import READY, ModelRepository, profile_batches

CORE_MODELS = {"digits", "double", "smallcnn", "resnet18-half"}
OCR_MODELS = {"ppocr-det", "ppocr-cls", "ppocr-rec"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("examples") / "repository"
    results = build_examples(root)
    assert {r.name for r in results if r.status == "built"} >= CORE_MODELS
    assert not any(r.name.startswith("game-") for r in results)  # built only when named
    return root


def test_every_example_model_loads_and_runs(built: Path) -> None:
    repo = ModelRepository(built)
    index = repo.load_all()
    expected = CORE_MODELS | (OCR_MODELS if models_dir() is not None else set())
    assert {s.name for s in index if s.state == READY} == expected
    assert all(s.state == READY for s in index), [s for s in index if s.state != READY]
    for spec in repo.ready_specs():
        assert spec.slo_ms > 0 and spec.parameters["slo_ms"]
        assert max(profile_batches(spec)) <= spec.max_batch_size
        feed = {t.name: np.random.default_rng(0).random((2, *t.dims), dtype=np.float32) for t in spec.inputs}
        with make_executor(spec, "onnxruntime", threads=1) as executor:
            out = executor.run(feed)
        for tensor in spec.outputs:
            got = out[tensor.name]
            assert got.shape[0] == 2
            assert all(d == -1 or d == g for d, g in zip(tensor.dims, got.shape[1:], strict=True)), tensor
            assert np.isfinite(got.astype(np.float64)).all()


def test_classifier_outputs_are_probabilities(built: Path) -> None:
    repo = ModelRepository(built)
    repo.load_all()
    for name in ("digits", "smallcnn", "resnet18-half"):
        spec = repo.spec(name)
        feed = {t.name: np.random.default_rng(1).random((3, *t.dims), dtype=np.float32) * 16 for t in spec.inputs}
        with make_executor(spec, "onnxruntime", threads=1) as executor:
            probabilities = executor.run(feed, ["probabilities"])["probabilities"]
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)


def test_digits_records_its_test_accuracy(built: Path) -> None:
    spec = ModelRepository(built).load("digits")[0]
    assert float(spec.parameters["test_accuracy"]) > 0.95
    assert "test accuracy" in (built / "README.md").read_text()


def test_rebuilding_is_a_no_op_when_up_to_date(built: Path) -> None:
    model_file = built / "resnet18-half" / "1" / "model.onnx"
    before_ns = model_file.stat().st_mtime_ns
    results = build_examples(built)
    assert {r.name: r.status for r in results if r.name in CORE_MODELS} == dict.fromkeys(CORE_MODELS, "up to date")
    assert model_file.stat().st_mtime_ns == before_ns


def test_a_damaged_model_is_rebuilt(built: Path) -> None:
    config = built / "smallcnn" / "config.pbtxt"
    original = config.read_text()
    config.write_text("garbage")
    [result] = build_examples(built, only=["smallcnn"])
    assert result.status == "built"
    assert config.read_text() == original


def test_same_seed_same_models(built: Path, tmp_path: Path) -> None:
    build_examples(tmp_path, only=["smallcnn", "digits"])
    for name in ("smallcnn", "digits"):
        first = hashlib.sha256((built / name / "1" / "model.onnx").read_bytes()).hexdigest()
        second = hashlib.sha256((tmp_path / name / "1" / "model.onnx").read_bytes()).hexdigest()
        assert first == second, name
    assert (tmp_path / "digits" / STAMP_FILE).is_file()


def test_cli_builds_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build-examples", str(tmp_path / "repo"), "--only", "smallcnn"]) == 0
    out = capsys.readouterr().out
    assert "smallcnn" in out and "built" in out
    assert (tmp_path / "repo" / "smallcnn" / "1" / "model.onnx").is_file()
    assert main(["build-examples", str(tmp_path / "repo"), "--only", "nope"]) == 2
    assert capsys.readouterr().err.strip() == (
        "squishy: error: unknown example model 'nope' (known: digits, double, game-digit, game-large, "
        "game-parity, ppocr-cls, ppocr-det, ppocr-rec, resnet18-half, smallcnn)"
    )


def test_the_trivial_model_doubles_its_input(built: Path) -> None:
    repo = ModelRepository(built)
    repo.load_all()
    spec = repo.spec("double")
    x = np.arange(8, dtype=np.float32).reshape(2, 4) - 3.5
    with make_executor(spec, "onnxruntime", threads=1) as executor:
        np.testing.assert_array_equal(executor.run({"x": x})["y"], 2 * x)
