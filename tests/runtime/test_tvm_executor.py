"""The TVM executor: a tiny CNN compiled by TVM (Relax, llvm) into ``model.so``, loaded from a repository
entry of platform ``tvm_relax``, gives ONNX Runtime's answers at every batch size from one library, and
is profiled through the executor like an ONNX model."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("tvm")

from squishy.cluster import SlotLayout
from squishy.examples.graph import FLOAT, INT64, GraphBuilder, tensor_info
from squishy.runtime.api import InferRequest
from squishy.runtime.core import ServingConfig, ServingCore
from squishy.runtime.executors import ExecutorError, TvmExecutor, make_executor
from squishy.runtime.repository import PLATFORM_TVM, ModelRepository
from squishy.variants.entry import Tensor, config_text
from squishy.variants.tvm_build import DEFAULT_TARGET, TvmUnavailableError, compile_onnx
from tests.runtime.onnx_models import WEIGHT, linear_model

SIDE = 12
CLASSES = 3


def tiny_cnn(seed: int = 0) -> onnx.ModelProto:
    """``image`` FP32 [batch, 1, 12, 12] → ``probabilities`` FP32 [batch, 3] and ``label`` INT64 [batch, 1]."""
    g = GraphBuilder(seed)
    x = g.max_pool(g.relu(g.conv("image", 1, 4, 3)), 2, 2)
    logits = g.dense(g.global_avg_pool_flat(x), 4, CLASSES)
    probabilities = g.node("Softmax", [logits], output="probabilities", axis=1)
    g.node("ArgMax", [probabilities], output="label", axis=1, keepdims=1)
    return g.model(
        [tensor_info("image", FLOAT, ["batch", 1, SIDE, SIDE])],
        [tensor_info("probabilities", FLOAT, ["batch", CLASSES]), tensor_info("label", INT64, ["batch", 1])],
        "tiny_cnn",
        "test CNN",
    )


@pytest.fixture(scope="module")
def tvm_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A repository with ``cnn`` (declared platform) and ``lin`` (platform guessed from model.so)."""
    root = tmp_path_factory.mktemp("tvmrepo")
    sources = tmp_path_factory.mktemp("onnx")
    onnx.save(tiny_cnn(), str(sources / "cnn.onnx"))
    (root / "cnn" / "1").mkdir(parents=True)
    build = compile_onnx(sources / "cnn.onnx", root / "cnn" / "1" / "model.so")
    assert build.target == DEFAULT_TARGET and build.target_note == "TVM llvm"
    inputs = [Tensor("image", "TYPE_FP32", (1, SIDE, SIDE))]
    outputs = [Tensor("probabilities", "TYPE_FP32", (CLASSES,)), Tensor("label", "TYPE_INT64", (1,))]
    parameters = {"slo_ms": "100", "profile_batches": "1,4"}
    (root / "cnn" / "config.pbtxt").write_text(config_text("cnn", PLATFORM_TVM, 16, inputs, outputs, parameters))
    onnx.save(linear_model(), str(sources / "lin.onnx"))
    (root / "lin" / "1").mkdir(parents=True)
    compile_onnx(sources / "lin.onnx", root / "lin" / "1" / "model.so")
    (root / "lin" / "config.yaml").write_text(
        "max_batch_size: 8\n"
        "input: [{name: x, data_type: TYPE_FP32, dims: [4]}]\n"
        "output: [{name: y, data_type: TYPE_FP32, dims: [2]}]\n"
    )
    return root, sources


def test_a_tvm_library_gives_onnx_runtimes_answers_at_every_batch_size(tvm_repo: tuple[Path, Path]) -> None:
    root, sources = tvm_repo
    repository = ModelRepository(root)
    repository.load_all()
    spec = repository.spec("cnn")
    assert spec.platform == PLATFORM_TVM and spec.model_path == root / "cnn" / "1" / "model.so"
    reference = ort.InferenceSession(str(sources / "cnn.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    with make_executor(spec, "auto", threads=1) as executor:
        assert isinstance(executor, TvmExecutor)
        for batch in (1, 3, 16, 5):  # one library, a symbolic batch dimension
            image = rng.standard_normal((batch, 1, SIDE, SIDE)).astype(np.float32)
            out = executor.run({"image": image})
            probabilities, label = reference.run(["probabilities", "label"], {"image": image})
            assert out["probabilities"].shape == (batch, CLASSES) and out["label"].dtype == np.int64
            np.testing.assert_allclose(out["probabilities"], probabilities, atol=1e-5)
            np.testing.assert_array_equal(out["label"], label)
        assert list(executor.run({"image": image}, ["label"])) == ["label"]


def test_the_platform_is_told_from_model_so_and_a_single_output_is_returned(tvm_repo: tuple[Path, Path]) -> None:
    root, _ = tvm_repo
    [spec] = ModelRepository(root).load("lin")
    assert spec.platform == PLATFORM_TVM and spec.config.backend == "tvm"
    x = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    with make_executor(spec, "tvm", threads=1) as executor:
        np.testing.assert_allclose(executor.run({"x": x})["y"], x @ WEIGHT, atol=1e-5)


def test_tvm_errors_are_one_line_and_name_the_model(tvm_repo: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = tvm_repo
    [spec] = ModelRepository(root).load("lin")
    with pytest.raises(ExecutorError, match="ONNX Runtime cannot run platform 'tvm_relax'"):
        make_executor(spec, "onnxruntime")
    executor = make_executor(spec, "tvm")
    with pytest.raises(ExecutorError, match="input 'x' is float64, the model takes float32"):
        executor.run({"x": np.zeros((2, 4))})
    with pytest.raises(ExecutorError, match="model 'lin': TVM failed") as err:
        executor.run({"x": np.zeros((2, 5), np.float32)})
    assert "\n" not in str(err.value)
    executor.close()
    with pytest.raises(ExecutorError, match="closed"):
        executor.run({"x": np.zeros((2, 4), np.float32)})
    (tmp_path / "bad" / "1").mkdir(parents=True)
    (tmp_path / "bad" / "1" / "model.so").write_bytes(b"not a shared library")
    (tmp_path / "bad" / "config.yaml").write_text((root / "lin" / "config.yaml").read_text())
    [bad] = ModelRepository(tmp_path).load("bad")
    with pytest.raises(ExecutorError, match=r"TVM cannot load .*model\.so as a Relax VM library"):
        make_executor(bad, "auto")


def test_a_graph_tvm_cannot_import_is_refused_with_the_operator_named(tmp_path: Path) -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Frobnicate", ["x"], ["y"], domain="example.custom")],
        "custom",
        [tensor_info("x", FLOAT, ["batch", 4])],
        [tensor_info("y", FLOAT, ["batch", 4])],
    )
    opsets = [onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("example.custom", 1)]
    onnx.save(onnx.helper.make_model(graph, opset_imports=opsets, ir_version=8), str(tmp_path / "custom.onnx"))
    with pytest.raises(TvmUnavailableError, match="not supported for frontend ONNX: Frobnicate"):
        compile_onnx(tmp_path / "custom.onnx", tmp_path / "custom.so")
    assert not (tmp_path / "custom.so").exists()


def test_worker_threads_run_at_their_thread_count_without_being_pinned(tvm_repo: tuple[Path, Path]) -> None:
    root, sources = tvm_repo
    spec = ModelRepository(root).load("cnn")[0]
    reference = ort.InferenceSession(str(sources / "cnn.onnx"), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(2).standard_normal((8, 1, SIDE, SIDE)).astype(np.float32)
    expected = reference.run(["probabilities"], {"image": image})[0]
    results: dict[int, np.ndarray] = {}
    affinity: dict[int, set[int]] = {}

    def work(threads: int) -> None:
        before = os.sched_getaffinity(0)
        with TvmExecutor(spec, threads) as executor:
            results[threads] = executor.run({"image": image})["probabilities"]
        affinity[threads] = before ^ os.sched_getaffinity(0)  # what TVM changed about this thread

    workers = [threading.Thread(target=work, args=(n,)) for n in (1, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for threads in (1, 2):
        np.testing.assert_allclose(results[threads], expected, atol=1e-5)
        assert affinity[threads] == set()
    assert int(os.environ["TVM_NUM_THREADS"]) >= 2


def test_a_tvm_model_is_profiled_through_its_executor(tvm_repo: tuple[Path, Path]) -> None:
    root, _ = tvm_repo
    repository = ModelRepository(root)
    spec = repository.load("cnn")[0]
    profile = repository.profile(spec, threads=1, warmup=1, repeats=3, concurrency=2)
    assert 1 in profile.batch_ms and all(v > 0 for v in profile.batch_ms.values())
    assert "TVM" in profile.source and profile.device == "cpu-1tx2"
    # The scheduler's cleaned view may drop a size noise made look worse; the cache keeps what was measured.
    cached = json.loads((root / "cnn" / "1" / "cpu-1tx2.profile-cache.json").read_text())
    assert cached["batches_measured"] == [1, 4]


def test_the_serving_core_profiles_a_tvm_model_at_start_up_and_serves_it(tvm_repo: tuple[Path, Path], tmp_path: Path):
    root, sources = tvm_repo
    # A repository of its own, so the start-up profile is measured here rather than read from a cache.
    (tmp_path / "cnn" / "1").mkdir(parents=True)
    shutil.copyfile(root / "cnn" / "config.pbtxt", tmp_path / "cnn" / "config.pbtxt")
    shutil.copyfile(root / "cnn" / "1" / "model.so", tmp_path / "cnn" / "1" / "model.so")
    images = np.random.default_rng(4).standard_normal((6, 1, SIDE, SIDE)).astype(np.float32)
    rows = [(0, 1), (1, 4), (4, 6)]

    async def scenario() -> list[np.ndarray]:
        serving = ServingCore(ModelRepository(tmp_path), ServingConfig(layout=SlotLayout(1, 1), executor="auto"))
        await serving.start()
        try:
            requests = [InferRequest("cnn", None, {"image": images[a:b]}) for a, b in rows]
            replies = await asyncio.gather(*(serving.infer(r) for r in requests))
        finally:
            await serving.stop()
        return [reply.outputs["probabilities"] for reply in replies]

    served = asyncio.run(scenario())
    reference = ort.InferenceSession(str(sources / "cnn.onnx"), providers=["CPUExecutionProvider"])
    for (a, b), probabilities in zip(rows, served, strict=True):
        expected = reference.run(["probabilities"], {"image": images[a:b]})[0]
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert (tmp_path / "cnn" / "1" / "cpu-1t.profile-cache.json").is_file()
