"""``squishy variants``: builds measured here, checked against the original, kept only when Pareto-better,
written as a repository entry that the serving core accepts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from squishy.cli import main
from squishy.errors import SquishyError
from squishy.runtime.repository import ModelRepository, variant_names
from squishy.runtime.tasks import ServedTask, VariantSession, task_problem
from squishy.variants.generate import Validation, generate_variants


def classifier(path: Path, seed: int = 0) -> np.ndarray:
    """x FP32 [N, 16] → scores FP32 [N, 4] (two MatMuls with a ReLU); returns the first weight."""
    rng = np.random.default_rng(seed)
    first, second = rng.normal(size=(16, 32)).astype(np.float32), rng.normal(size=(32, 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["scores"]),
        ],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(first, "w1"), numpy_helper.from_array(second, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return first


def validation_set(path: Path, model: Path) -> Validation:
    """Labels are the original model's own answers, except a tenth flipped: its accuracy is 0.9 exactly."""
    import onnxruntime as ort

    x = np.random.default_rng(1).normal(size=(400, 16)).astype(np.float32)
    answers = ort.InferenceSession(str(model)).run(None, {"x": x})[0].argmax(axis=1)
    labels = answers.copy()
    labels[::10] = (labels[::10] + 1) % 4
    np.savez(path, x=x, labels=labels)
    return Validation.load(path)


def test_generated_variants_are_measured_checked_and_written_as_a_task(tmp_path: Path):
    model = tmp_path / "net.onnx"
    classifier(model)
    validation = validation_set(tmp_path / "val.npz", model)
    lines: list[str] = []
    candidates = generate_variants(
        model, validation, tmp_path / "repo", name="net", slo_ms=50, max_batch=8,
        builds=("ort-basic", "int8-dynamic"), progress=lines.append,
    )  # fmt: skip
    by_build = {c.build: c for c in candidates}
    assert by_build["original"].accuracy == pytest.approx(0.9)
    assert by_build["ort-basic"].max_abs_diff <= 1e-4 and by_build["ort-basic"].agreement == 1.0
    assert by_build["int8-dynamic"].max_abs_diff > 0.0 and by_build["int8-dynamic"].agreement > 0.5
    assert all(c.kept or c.why_not for c in candidates)  # every candidate left out says why
    assert any(line.startswith("[3/3]") for line in lines)  # progress, step by step
    repository = ModelRepository(tmp_path / "repo")
    repository.load_all()
    task = repository.spec("net")
    kept = [c.name for c in candidates if c.kept]
    assert list(variant_names(task)) == kept and kept
    sessions = {}
    for name in kept:
        spec = repository.spec(name)
        assert spec.parameters["accuracy"] == f"{next(c for c in candidates if c.name == name).accuracy:.4f}"
        sessions[name] = VariantSession(f"{name}:1", spec)
    assert task_problem(ServedTask.from_spec(task), sessions) is None  # squishy serve takes it as is
    summary = json.loads((tmp_path / "repo" / "net" / "variants.json").read_text())
    assert {row["build"] for row in summary} == {"original", "ort-basic", "int8-dynamic"}


def test_the_cli_refuses_a_validation_set_without_the_models_inputs(tmp_path: Path, capsys):
    model = tmp_path / "net.onnx"
    classifier(model)
    np.savez(tmp_path / "val.npz", image=np.zeros((3, 16), np.float32), labels=np.zeros(3))
    code = main(["variants", str(model), "--validation", str(tmp_path / "val.npz"), "--repository",
                 str(tmp_path / "repo"), "--name", "net"])  # fmt: skip
    assert code != 0 and "no array for input(s) x" in capsys.readouterr().err


def test_a_validation_set_without_labels_is_refused(tmp_path: Path):
    np.savez(tmp_path / "val.npz", x=np.zeros((3, 16), np.float32))
    with pytest.raises(SquishyError, match="needs an array 'labels'"):
        Validation.load(tmp_path / "val.npz")


def test_the_tvm_build_is_compiled_checked_and_measured_through_its_executor(tmp_path: Path):
    pytest.importorskip("tvm")

    model = tmp_path / "net.onnx"
    classifier(model)
    validation = validation_set(tmp_path / "val.npz", model)
    candidates = generate_variants(
        model, validation, tmp_path / "repo", name="net", slo_ms=50, max_batch=8, builds=("tvm",),
        progress=lambda _: None,
    )  # fmt: skip
    tvm = next(c for c in candidates if c.build == "tvm")
    assert tvm.max_abs_diff <= 1e-4 and tvm.agreement == 1.0 and tvm.accuracy == pytest.approx(0.9)
    assert tvm.note.startswith("TVM llvm") and tvm.cost_ms > 0 and tvm.profile["batch_ms"]
    assert "TVM" in tvm.profile["source"]
    # Checked, so only the Pareto filter may leave it out (TVM untuned is often slower than ONNX Runtime).
    assert tvm.kept or tvm.why_not.startswith("not Pareto-better")
    repository = ModelRepository(tmp_path / "repo")
    repository.load_all()
    assert list(variant_names(repository.spec("net"))) == [c.name for c in candidates if c.kept]


def test_a_kept_tvm_variant_is_written_as_model_so_and_served_by_the_tvm_executor(tmp_path: Path):
    pytest.importorskip("tvm")
    from squishy.runtime.executors import TvmExecutor, make_executor
    from squishy.runtime.repository import onnx_graph_io
    from squishy.variants.generate import Candidate, _write
    from squishy.variants.tvm_build import compile_onnx

    model = tmp_path / "net.onnx"
    classifier(model)
    built = compile_onnx(model, tmp_path / "net.so")
    # Whether TVM wins on cost here is the Pareto filter's call; the entry it writes when it does is tested.
    kept = Candidate("net-tvm", "tvm", built.path, accuracy=0.9, ci_low=0.87, ci_high=0.93, agreement=1.0,
                     note=built.target_note, kept=True)  # fmt: skip
    inputs, outputs = onnx_graph_io(model)
    _write(tmp_path / "repo", "net", [kept], [kept], inputs, outputs, slo_ms=50, max_batch=8)
    repository = ModelRepository(tmp_path / "repo")
    repository.load_all()
    spec = repository.spec("net-tvm")
    assert spec.platform == "tvm_relax" and spec.model_path == tmp_path / "repo" / "net-tvm" / "1" / "model.so"
    assert spec.parameters["variant_build_note"] == built.target_note and spec.max_batch_size == 8
    x = np.random.default_rng(3).normal(size=(5, 16)).astype(np.float32)
    with make_executor(spec, "auto") as executor:
        assert isinstance(executor, TvmExecutor)
        np.testing.assert_allclose(executor.run({"x": x})["scores"], onnx_scores(model, x), atol=1e-4)
    task = repository.spec("net")
    sessions = {"net-tvm": VariantSession("net-tvm:1", spec)}
    assert task_problem(ServedTask.from_spec(task), sessions) is None
    assert repository.profile(spec, threads=1, warmup=1, repeats=2).batch_ms  # profiled at start-up like ONNX


def onnx_scores(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(model)).run(None, {"x": x})[0]


WITHOUT_TVM = """
import importlib.abc, importlib.machinery, sys
from pathlib import Path


class NoTvm(importlib.abc.MetaPathFinder):
    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if name == "tvm" or name.startswith("tvm."):
            return None
        return self.inner.find_spec(name, path, target)

    def invalidate_caches(self):
        self.inner.invalidate_caches()


finder = importlib.machinery.PathFinder
sys.meta_path = [NoTvm(f) if f is finder else f for f in sys.meta_path]
from squishy.runtime.api import ModelSpec
from squishy.runtime.executors import ExecutorError, TvmExecutor
from squishy.runtime.repository import ModelRepository
from squishy.variants.generate import Validation, generate_variants

root = Path(sys.argv[1])
[c] = [c for c in generate_variants(root / "net.onnx", Validation.load(root / "val.npz"), root / "repo", name="net",
        slo_ms=50, max_batch=8, builds=("tvm",), progress=lambda _: None) if c.build == "tvm"]
print("build:", c.why_not)
try:
    TvmExecutor(ModelSpec("m", "1", "tvm_relax", 8, (), (), 100.0, model_path=root / "model.so"))
except ExecutorError as exc:
    print("executor:", exc)
(root / "served" / "m" / "1").mkdir(parents=True)
(root / "served" / "m" / "1" / "model.so").write_bytes(b"")
(root / "served" / "m" / "config.yaml").write_text(
    "max_batch_size: 8\\ninput: [{name: x, data_type: TYPE_FP32, dims: [16]}]\\n"
    "output: [{name: scores, data_type: TYPE_FP32, dims: [4]}]\\n"
)
[state] = ModelRepository(root / "served").load_all()
print("repository:", state.state, state.reason)
"""


def test_without_tvm_the_build_is_left_out_and_the_executor_says_how_to_install_it(tmp_path: Path):
    import subprocess
    import sys

    model = tmp_path / "net.onnx"
    classifier(model)
    validation_set(tmp_path / "val.npz", model)
    # A fresh interpreter that cannot find tvm, as where the tvm extra is not installed.
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TVM, str(tmp_path)], capture_output=True, text=True, timeout=120, check=True
    )
    assert "build: needs TVM (pip install 'squishy[tvm]')" in result.stdout
    assert "executor: model 'm': platform tvm_relax needs TVM (pip install 'squishy[tvm]')" in result.stdout
    assert "repository: UNAVAILABLE m/1/model.so: platform tvm_relax needs TVM (pip install 'squishy[tvm]')" in (
        result.stdout
    )
