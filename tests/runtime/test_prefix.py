"""Prefix batching at run time: models cut at a named tensor into one shared trunk and their own heads.

The cut must compose back to the whole model; models with the same trunk (graph and weights) form one
group, others do not; a tensor that cannot end a trunk is a clear error; a mixed batch runs the trunk once
and answers each request with its own model's outputs; and the serving core plans the group as one
session whose batches hold every member's requests.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from squishy.batching import Item
from squishy.clock import ManualClock
from squishy.cluster import SlotLayout
from squishy.runtime.api import InferRequest
from squishy.runtime.core import ServingConfig, ServingCore
from squishy.runtime.executors import OnnxRuntimeExecutor
from squishy.runtime.prefix import PrefixError, PrefixExecutor, cut_model, group_cuts
from squishy.runtime.repository import ModelRepository
from tests.engine.virtual import VirtualServer

from .onnx_models import add_model

TRUNK_WEIGHT = np.linspace(-1.0, 1.0, 4 * 6, dtype=np.float32).reshape(4, 6)


def branchy_model(head_outputs: int, head_seed: int, trunk_weight: np.ndarray = TRUNK_WEIGHT) -> onnx.ModelProto:
    """x [batch, 4] → MatMul, Relu → ``feat`` [batch, 6] (the trunk) → MatMul → ``y`` [batch, head_outputs]."""
    head = np.random.default_rng(head_seed).standard_normal((6, head_outputs)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "trunk_w"], ["hidden"]),
        helper.make_node("Relu", ["hidden"], ["feat"]),
        helper.make_node("MatMul", ["feat", "head_w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        f"branchy_{head_seed}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", head_outputs])],
        initializer=[numpy_helper.from_array(trunk_weight, "trunk_w"), numpy_helper.from_array(head, "head_w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def skip_model() -> onnx.ModelProto:
    """Like ``branchy_model`` but its head also reads ``hidden``: ``feat`` does not end a trunk."""
    model = branchy_model(2, 1)
    graph = model.graph
    graph.node[2].output[0] = "head"
    graph.node.append(helper.make_node("MatMul", ["hidden", "head_w"], ["skip"]))
    graph.node.append(helper.make_node("Add", ["head", "skip"], ["y"]))
    return model


CONFIG = """
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input {{ name: "x" data_type: TYPE_FP32 dims: [4] }}
output {{ name: "y" data_type: TYPE_FP32 dims: [{outputs}] }}
parameters {{ key: "slo_ms" value {{ string_value: "200" }} }}
parameters {{ key: "prefix_tensor" value {{ string_value: "{tensor}" }} }}
"""
PROFILE = '{{"model": "{name}", "device": "cpu", "batch_ms": {{"1": 4, "8": 12}}}}'


def write(repo: Path, name: str, model: onnx.ModelProto, outputs: int, tensor: str = "feat") -> None:
    model_dir = add_model(repo, name, config=CONFIG.format(name=name, outputs=outputs, tensor=tensor), model=model)
    (model_dir / "profile.json").write_text(PROFILE.format(name=name))


TRUNK_PROFILE = '{"model": "trunk", "device": "cpu", "batch_ms": {"1": 2.5, "8": 7}}'


def two_heads(repo: Path) -> ModelRepository:
    """Two models on one trunk; every ℓ(b) given (the trunk's too), so nothing is measured."""
    write(repo, "head-a", branchy_model(2, 1), 2)
    write(repo, "head-b", branchy_model(3, 2), 3)
    for name in ("head-a", "head-b"):
        (repo / name / "1" / "prefix-feat").mkdir()
        (repo / name / "1" / "prefix-feat" / "trunk.profile.json").write_text(TRUNK_PROFILE)
    repository = ModelRepository(repo)
    repository.load_all()
    return repository


def full_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_the_trunk_and_the_head_compose_to_the_whole_model(tmp_path: Path):
    repository = two_heads(tmp_path)
    cut = cut_model(repository.spec("head-a"))
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    features = ort.InferenceSession(str(cut.trunk_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    head = ort.InferenceSession(str(cut.head_path), providers=["CPUExecutionProvider"])
    composed = head.run(None, {"feat": features})[0]
    np.testing.assert_allclose(composed, full_outputs(repository.spec("head-a").model_path, x), rtol=1e-6)
    assert (cut.tensor.name, cut.tensor.datatype, cut.tensor.dims) == ("feat", "FP32", (6,))
    assert cut.trunk_spec().outputs == (cut.tensor,) and cut.head_spec().inputs == (cut.tensor,)


def test_models_with_the_same_trunk_form_a_group_and_others_do_not(tmp_path: Path):
    repository = two_heads(tmp_path)
    write(tmp_path, "other-trunk", branchy_model(2, 3, trunk_weight=TRUNK_WEIGHT * 2), 2)
    repository.load_all()
    cuts = {name: cut_model(repository.spec(name)) for name in ("head-a", "head-b", "other-trunk")}
    assert cuts["head-a"].digest == cuts["head-b"].digest != cuts["other-trunk"].digest
    groups = group_cuts(list(cuts.values()))
    assert [sorted(c.model.name for c in group) for group in groups] == [["head-a", "head-b"]]
    # Cutting again rewrites nothing: the trunk's profile cache beside it stays valid.
    before = cuts["head-a"].trunk_path.stat().st_mtime_ns
    cut_model(repository.spec("head-a"))
    assert cuts["head-a"].trunk_path.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("model", "tensor", "message"),
    [
        (branchy_model(2, 1), "nope", "no node of the graph computes"),
        (branchy_model(2, 1), "y", "is an output of the model"),
        (skip_model(), "feat", "also read hidden"),
    ],
)
def test_a_tensor_that_cannot_end_a_trunk_is_a_clear_error(tmp_path: Path, model, tensor, message):
    write(tmp_path, "bad", model, 2, tensor=tensor)
    repository = ModelRepository(tmp_path)
    repository.load_all()
    with pytest.raises(PrefixError, match=message):
        cut_model(repository.spec("bad"))


@dataclass
class _Pending:
    request: InferRequest
    routed: str


class CountingExecutor(OnnxRuntimeExecutor):
    runs = 0

    def run(self, inputs, output_names=()):
        CountingExecutor.runs += 1
        return super().run(inputs, output_names)


def test_a_mixed_batch_runs_the_trunk_once_and_each_request_gets_its_own_models_answer(tmp_path: Path):
    repository = two_heads(tmp_path)
    cuts = {name: cut_model(repository.spec(name)) for name in ("head-a", "head-b")}
    trunk = CountingExecutor(cuts["head-a"].trunk_spec(), 1)
    heads = {name: OnnxRuntimeExecutor(cut.head_spec(), 1) for name, cut in cuts.items()}
    executor = PrefixExecutor(cuts["head-a"].trunk_spec(), trunk, heads, "feat", lambda item: item.payload.routed)
    rng = np.random.default_rng(1)
    asked = [("head-a", 1), ("head-b", 3), ("head-a", 2), ("head-b", 1)]
    items = []
    for index, (name, rows) in enumerate(asked):
        x = rng.standard_normal((rows, 4)).astype(np.float32)
        items.append(
            Item(
                deadline_ms=1e9,
                arrival_ms=0.0,
                size=rows,
                payload=_Pending(InferRequest(name, None, {"x": x}, request_id=str(index)), name),
            )
        )
    outputs, _ = executor.run_items(items)
    assert CountingExecutor.runs == 1
    for item, output in zip(items, outputs, strict=True):
        request = item.payload.request
        expected = full_outputs(repository.spec(request.model_name).model_path, request.inputs["x"])
        np.testing.assert_allclose(output["y"], expected, rtol=1e-5, atol=1e-6)


def test_the_core_plans_the_group_as_one_session_whose_batches_mix_its_members(tmp_path: Path):
    repository = two_heads(tmp_path)
    clock = ManualClock()
    config = ServingConfig(layout=SlotLayout(1, 1), executor="null", epoch_s=3600)
    serving = ServingCore(repository, config, clock=clock)
    asyncio.run(serving.start(run_threads=False))
    server = VirtualServer(serving, clock)
    names = {}
    for index in range(2400):  # 400 req/s for 6 s, the two models alternating
        name = ("head-a", "head-b")[index % 2]
        names[f"r{index}"] = name
        server.submit_at(
            index * 2.5, InferRequest(name, None, {"x": np.ones((1, 4), np.float32)}, request_id=f"r{index}")
        )
    server.run(7000.0)
    plan = serving.plan
    assert plan is not None
    [allocation] = [a for backend in plan.backends for a in backend.allocations]
    assert allocation.model.endswith(":prefix")
    assert sorted(m.model for m in allocation.members) == ["head-a:1", "head-b:1"]
    assert allocation.batch > 1
    # Once the control loop has planned for the load (it starts at 1 req/s per model), every request is good.
    settled = [f"r{index}" for index in range(1200, 2400)]
    assert all(server.outcomes[rid].status == "good" for rid in settled)
    good = [rid for rid, outcome in server.outcomes.items() if outcome.status == "good"]
    for rid in good:  # each request answered with its own model's outputs
        assert server.outcomes[rid].response.outputs["y"].shape == (1, 2 if names[rid] == "head-a" else 3)
    settled_batches = [ids for _, start, ids in server.batches if start >= 3000.0]
    mixed = [ids for ids in settled_batches if {names[i] for i in ids} == {"head-a", "head-b"}]
    assert len(mixed) > len(settled_batches) / 2
    statistics = {s.name: s for s in serving.statistics()}
    answered = [rid for rid, outcome in server.outcomes.items() if outcome.status in ("good", "late")]
    assert statistics["head-a"].success_count + statistics["head-b"].success_count == len(answered)
    assert statistics["head-a"].success_count > 600 and statistics["head-b"].success_count > 600


def test_without_prefix_batching_each_model_is_its_own_session(tmp_path: Path):
    repository = two_heads(tmp_path)
    config = ServingConfig(layout=SlotLayout(1, 1), executor="null", epoch_s=3600, prefix_batching=False)
    serving = ServingCore(repository, config, clock=ManualClock())
    asyncio.run(serving.start(run_threads=False))
    plan = serving.plan
    assert plan is not None
    assert sorted(a.model for b in plan.backends for a in b.allocations) == ["head-a:1", "head-b:1"]


def test_a_model_loaded_into_a_group_later_is_answered_by_its_own_head(tmp_path: Path):
    """With the worker threads and ONNX Runtime: the group's executors are made again with the new head."""
    repository = two_heads(tmp_path)
    config = ServingConfig(layout=SlotLayout(1, 1), executor="onnxruntime")

    async def scenario() -> dict[str, np.ndarray]:
        serving = ServingCore(repository, config)
        await serving.start()
        try:
            x = np.ones((1, 4), np.float32)
            await serving.infer(InferRequest("head-a", None, {"x": x}))  # the group's executors exist now
            write(tmp_path, "head-c", branchy_model(4, 3), 4)  # the same trunk, a third head
            (tmp_path / "head-c" / "1" / "prefix-feat").mkdir()
            (tmp_path / "head-c" / "1" / "prefix-feat" / "trunk.profile.json").write_text(TRUNK_PROFILE)
            await serving.load_model("head-c")
            [allocation] = [a for backend in serving.plan.backends for a in backend.allocations]
            assert sorted(m.model for m in allocation.members) == ["head-a:1", "head-b:1", "head-c:1"]
            replies = await asyncio.gather(
                *(serving.infer(InferRequest(n, None, {"x": x})) for n in ("head-a", "head-c"))
            )
        finally:
            await serving.stop()
        return {reply.model_name: reply.outputs["y"] for reply in replies}

    outputs = asyncio.run(scenario())
    x = np.ones((1, 4), np.float32)
    for name in ("head-a", "head-c"):
        np.testing.assert_allclose(outputs[name], full_outputs(tmp_path / name / "1" / "model.onnx", x), rtol=1e-5)
