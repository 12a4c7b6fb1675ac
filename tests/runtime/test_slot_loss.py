"""A slot whose process dies (a Ray actor or its node, ``squishy.cluster.ray``): the requests it held are
retried once on the slots that remain, every request gets exactly one reply, and the plan is made again
for the surviving slots. Run with the real worker threads and executors that raise ``SlotLostError`` once
their slot is marked dead, as ``RayExecutor`` does when its actor is gone."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from squishy.cluster import SlotLayout
from squishy.profiles import Profile
from squishy.runtime.api import InferRequest, InferResponse, ModelSpec
from squishy.runtime.core import ServingConfig, ServingCore
from squishy.runtime.executors import Executor, SlotLostError, make_executor
from squishy.runtime.repository import ModelRepository
from squishy.scheduler import Allocation, Backend, Plan

from .onnx_models import add_profiled_model


class DyingSlots:
    """An executor factory whose slots can be killed: a run on a dead slot raises ``SlotLostError``."""

    def __init__(self) -> None:
        self.dead: set[int] = set()
        self.lost_runs: list[int] = []  # the sizes of the batches a dead slot was asked to run

    def __call__(self, slot: int, spec: ModelSpec, kind: str, threads: int, profile: Profile | None) -> Executor:
        return _Dying(self, slot, make_executor(spec, kind, threads, profile))


class _Dying(Executor):
    def __init__(self, slots: DyingSlots, slot: int, inner: Executor) -> None:
        self.spec, self._slots, self._slot, self._inner = inner.spec, slots, slot, inner

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] = ()) -> dict[str, np.ndarray]:
        if self._slot in self._slots.dead:
            self._slots.lost_runs.append(len(next(iter(inputs.values()))))
            raise SlotLostError(f"model {self.spec.name!r}: slot {self._slot} is gone")
        return self._inner.run(inputs, output_names)


def _request(index: int) -> InferRequest:
    return InferRequest("lin", None, {"x": np.full((1, 4), index, np.float32)}, request_id=str(index))


def test_requests_on_a_lost_slot_move_to_the_survivor_and_the_plan_shrinks(tmp_path: Path):
    add_profiled_model(tmp_path, "lin", 500, {"1": 5, "8": 12})
    slots = DyingSlots()
    config = ServingConfig(layout=SlotLayout(2, 1), executor="null", epoch_s=3600, executor_factory=slots)
    serving = ServingCore(ModelRepository(tmp_path), config)

    def on_both_slots() -> Plan:
        allocation = Allocation("lin:1", 500, 100.0, 8, 12.0, 499.0)
        return Plan((Backend(0, 40.0, (allocation,)), Backend(1, 40.0, (allocation,))), lower_bound=0.0)

    async def scenario() -> tuple[list[InferResponse | BaseException], int]:
        await serving.start()
        try:
            serving.install_plan(on_both_slots())
            assert serving.plan is not None and serving.plan.num_backends == 2
            calls = []
            for index in range(60):
                if index == 20:
                    slots.dead.add(1)
                calls.append(asyncio.ensure_future(serving.infer(_request(index))))
                await asyncio.sleep(0.004)
            replies = await asyncio.gather(*calls, return_exceptions=True)
            for _ in range(100):  # the re-plan runs off the event loop, right after the loss
                if serving.plan is not None and serving.plan.num_backends == 1:
                    break
                await asyncio.sleep(0.05)
            after = await serving.infer(_request(99))
            assert after.outputs["y"].shape == (1, 2)
            return replies, serving.plan.num_backends if serving.plan is not None else 0
        finally:
            await serving.stop()

    replies, backends = asyncio.run(scenario())
    assert slots.lost_runs, "slot 1 was asked to run a batch after it died"
    failures = [r for r in replies if isinstance(r, BaseException)]
    assert failures == []  # a 500 ms SLO leaves room to run again on slot 0
    assert [r.request_id for r in replies] == [str(i) for i in range(60)]  # one reply each, its own
    assert backends == 1  # the plan fits the one slot left
    assert serving.control.capacity == 1
    metrics = serving.metrics.exposition().decode()
    assert 'squishy_slots_lost_total{slot="1"} 1.0' in metrics
