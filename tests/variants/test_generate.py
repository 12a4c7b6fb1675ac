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
        sessions[name] = VariantSession(f"{name}:1", spec, None)  # type: ignore[arg-type]
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
