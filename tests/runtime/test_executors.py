"""Executors: ONNX Runtime gives the trained model's answers; the null executor keeps the output contract."""

from __future__ import annotations

import importlib.util
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest

from squishy.examples.digits import digits_onnx, train_digits
from squishy.profiles import Profile
from squishy.runtime.api import ModelSpec, TensorSpec
from squishy.runtime.executors import (
    ExecutorError,
    NullExecutor,
    OnnxRuntimeExecutor,
    TorchExecutor,
    make_executor,
)
from squishy.runtime.repository import ModelRepository
from tests.runtime.onnx_models import WEIGHT, add_model


@pytest.fixture(scope="module")
def digits_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRepository, object]:
    trained = train_digits(seed=0)
    root = tmp_path_factory.mktemp("repo")
    (root / "digits" / "1").mkdir(parents=True)
    onnx.save(digits_onnx(trained), str(root / "digits" / "1" / "model.onnx"))
    repo = ModelRepository(root)
    repo.load_all()
    return repo, trained


def test_onnxruntime_digits_matches_sklearn(digits_repo: tuple[ModelRepository, object]) -> None:
    repo, trained = digits_repo
    spec = repo.spec("digits")
    clf = trained.classifier  # type: ignore[attr-defined]
    pixels = trained.test_inputs  # type: ignore[attr-defined]
    with make_executor(spec, "auto", threads=1) as executor:
        assert isinstance(executor, OnnxRuntimeExecutor)
        out = executor.run({"pixels": pixels})
    np.testing.assert_allclose(out["probabilities"], clf.predict_proba(pixels / 16.0), atol=1e-5)
    assert out["label"].shape == (len(pixels), 1)
    np.testing.assert_array_equal(out["label"][:, 0], clf.predict(pixels / 16.0))
    accuracy = float(np.mean(out["label"][:, 0] == trained.test_labels))  # type: ignore[attr-defined]
    assert accuracy > 0.95


def test_onnxruntime_returns_only_the_outputs_asked_for(digits_repo: tuple[ModelRepository, object]) -> None:
    repo, trained = digits_repo
    with make_executor(repo.spec("digits"), "onnxruntime", threads=1) as executor:
        out = executor.run({"pixels": trained.test_inputs[:3]}, ["label"])  # type: ignore[attr-defined]
        assert list(out) == ["label"]
        with pytest.raises(ExecutorError, match="has no output 'logits'"):
            executor.run({"pixels": trained.test_inputs[:3]}, ["logits"])  # type: ignore[attr-defined]


def test_onnxruntime_bad_input_is_one_line_error(tmp_path: Path) -> None:
    add_model(tmp_path, "lin")
    repo = ModelRepository(tmp_path)
    [spec] = repo.load("lin")
    executor = make_executor(spec, "onnxruntime", threads=1)
    with pytest.raises(ExecutorError, match="model 'lin': ONNX Runtime failed") as err:
        executor.run({"x": np.zeros((2, 4), dtype=np.float64)})
    assert "\n" not in str(err.value)
    executor.close()
    with pytest.raises(ExecutorError, match="closed"):
        executor.run({"x": np.zeros((2, 4), dtype=np.float32)})


def test_executors_run_concurrently_from_worker_threads(tmp_path: Path) -> None:
    add_model(tmp_path, "lin")
    [spec] = ModelRepository(tmp_path).load("lin")
    executors = [make_executor(spec, "onnxruntime", threads=1) for _ in range(2)]
    inputs = [np.random.default_rng(i).standard_normal((3, 4)).astype(np.float32) for i in range(8)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda i: executors[i % 2].run({"x": inputs[i]})["y"], range(8)))
    for x, y in zip(inputs, results, strict=True):
        np.testing.assert_allclose(y, x @ WEIGHT, rtol=1e-5, atol=1e-6)


def _null_spec(max_batch_size: int = 8) -> ModelSpec:
    return ModelSpec(
        name="fake",
        version="1",
        platform="onnxruntime_onnx",
        max_batch_size=max_batch_size,
        inputs=(TensorSpec("x", "FP32", (4,)),),
        outputs=(
            TensorSpec("scores", "FP32", (10,)),
            TensorSpec("label", "INT64", (1,)),
            TensorSpec("text", "BYTES", (-1,)),
            TensorSpec("mask", "BOOL", (2, 3)),
        ),
        slo_ms=100.0,
    )


def test_null_executor_returns_zero_tensors_of_the_spec() -> None:
    zeros = Profile(model="fake", device="cpu-1t", batch_ms={1: 0.0, 4: 0.0, 8: 0.0})
    executor = make_executor(_null_spec(), "null", threads=1, profile=zeros)
    assert isinstance(executor, NullExecutor)
    out = executor.run({"x": np.ones((3, 4), dtype=np.float32)})
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
        "scores": ((3, 10), np.dtype(np.float32)),
        "label": ((3, 1), np.dtype(np.int64)),
        "text": ((3, 1), np.dtype(object)),
        "mask": ((3, 2, 3), np.dtype(bool)),
    }
    assert not out["scores"].any() and not out["label"].any()
    assert list(executor.run({"x": np.ones((1, 4), np.float32)}, ["label"])) == ["label"]
    assert executor.batches_run == 2


def test_null_executor_refuses_batches_beyond_its_profile() -> None:
    profile = Profile(model="fake", device="cpu-1t", batch_ms={1: 0.0, 4: 0.0})
    executor = NullExecutor(_null_spec(), profile)
    with pytest.raises(ExecutorError, match="batch of 5 exceeds the profile's largest batch 4"):
        executor.run({"x": np.ones((5, 4), dtype=np.float32)})


def test_null_executor_without_batching_keeps_the_full_shape() -> None:
    spec = _null_spec(max_batch_size=0)
    out = NullExecutor(spec).run({"x": np.ones((4,), dtype=np.float32)})
    assert out["scores"].shape == (10,)


def test_make_executor_rejects_unknown_kinds_and_platform_mismatch() -> None:
    with pytest.raises(ExecutorError, match="unknown executor kind 'tensorrt'"):
        make_executor(_null_spec(), "tensorrt")
    with pytest.raises(ExecutorError, match="the Torch executor cannot run platform 'onnxruntime_onnx'"):
        make_executor(_null_spec(), "torch")
    with pytest.raises(ExecutorError, match="the TVM executor cannot run platform 'onnxruntime_onnx'"):
        make_executor(_null_spec(), "tvm")


TORCH_MISSING = importlib.util.find_spec("torch") is None


@pytest.mark.skipif(not TORCH_MISSING, reason="torch is installed")
def test_torch_executor_says_how_to_install_torch_when_missing(tmp_path: Path) -> None:
    spec = ModelSpec("ts", "1", "pytorch_libtorch", 4, (), (), 100.0, model_path=tmp_path / "model.pt")
    with pytest.raises(ExecutorError, match=r"needs PyTorch \(pip install torch==2.13.0\)"):
        TorchExecutor(spec)


@pytest.mark.skipif(TORCH_MISSING, reason="torch is not installed (optional extra: pip install torch==2.13.0)")
def test_torch_executor_runs_torchscript_from_the_repository(tmp_path: Path) -> None:
    import torch

    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.from_numpy(WEIGHT.copy()))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = x @ self.weight
            return y, y.argmax(dim=1, keepdim=True)

    (tmp_path / "ts" / "1").mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript
        torch.jit.script(TwoHeads()).save(str(tmp_path / "ts" / "1" / "model.pt"))
    (tmp_path / "ts" / "config.pbtxt").write_text(
        'platform: "pytorch_libtorch"\nmax_batch_size: 8\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] }, { name: "best" data_type: TYPE_INT64 dims: [ 1 ] } ]'
    )
    [spec] = ModelRepository(tmp_path).load("ts")
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    with make_executor(spec, "auto", threads=1) as executor:
        assert isinstance(executor, TorchExecutor)
        out = executor.run({"x": x})
        assert list(executor.run({"x": x}, ["best"])) == ["best"]
    np.testing.assert_allclose(out["y"], x @ WEIGHT, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["best"][:, 0], (x @ WEIGHT).argmax(axis=1))
