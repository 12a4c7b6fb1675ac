"""One engine for tasks served by model variants: the server's core and the simulator decide the same.

A task with two variants (and a plain model beside it) runs through ``ServingCore`` on a hand-driven clock
and through ``Simulation`` on one machine of two slots, from one trace. The task's load steps beyond what
its accurate variant can serve and back, so the chooser re-plans, splits the load and sheds nothing; a
burst makes the accurate variant's queue fall back to the cheaper one. Every request must get the same
outcome, every batch the same requests on the same slot at the same time, every re-plan the same plan,
and the variant that answered each request must be the same.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from squishy.clock import ManualClock
from squishy.cluster import SlotLayout
from squishy.runtime.api import InferRequest
from squishy.runtime.core import VARIANT_PARAMETER, ServingConfig, ServingCore
from squishy.runtime.repository import ModelRepository
from squishy.scheduler import Session, Workload
from squishy.scheduler.variants import Task, Variant
from squishy.sim import RequestTrace, Simulation
from tests.engine.compare import assert_same_decisions, mirror_config, phased_trace
from tests.engine.virtual import VirtualServer
from tests.runtime.onnx_models import add_profiled_model

FACTOR = 1.2  # batches run 20% slower than profiled: the chooser must see it as the server's does
DURATION_MS = 20_000.0
SLO_MS = 200.0
# big: 5 ms per request at batch 8 (about 200 req/s per slot); small: 0.5 ms.
VARIANTS = {"big": (0.9, {"1": 10.0, "8": 40.0}), "small": (0.7, {"1": 2.0, "8": 4.0})}
PLAIN = ("plain", 50.0, {"1": 2.0, "8": 6.0, "16": 10.0})
TASK = """
name: "digit"
platform: "squishy_variants"
max_batch_size: 8
input { name: "x" data_type: TYPE_FP32 dims: [4] }
output { name: "y" data_type: TYPE_FP32 dims: [2] }
parameters { key: "slo_ms" value { string_value: "200" } }
parameters { key: "variants" value { string_value: "big,small" } }
"""


def repository(tmp_path: Path) -> ModelRepository:
    for name, (accuracy, table) in VARIANTS.items():
        extra = f'parameters {{ key: "accuracy" value {{ string_value: "{accuracy}" }} }}'
        add_profiled_model(tmp_path, name, SLO_MS, table, extra=extra)
    add_profiled_model(tmp_path, PLAIN[0], PLAIN[1], PLAIN[2], max_batch=16)
    (tmp_path / "digit").mkdir()
    (tmp_path / "digit" / "config.pbtxt").write_text(TASK)
    return ModelRepository(tmp_path)


def trace(seed: int) -> RequestTrace:
    """Source 0 the plain model, source 1 the task: Poisson, the task stepping up to 2x and back, a burst."""
    phases = {
        0: [(0, DURATION_MS, 100.0)],
        1: [(0, 6000, 150.0), (6000, 14000, 700.0), (14000, 14050, 2000.0), (14050, DURATION_MS, 150.0)],
    }
    return phased_trace(seed, phases)


@pytest.mark.parametrize("seed", [5])
def test_a_task_is_served_alike_by_the_server_core_and_the_simulator(tmp_path: Path, seed: int) -> None:
    requests = trace(seed)
    called = [PLAIN[0], "digit"]

    clock = ManualClock()
    config = ServingConfig(
        layout=SlotLayout(2, 1), executor="null", epoch_s=6.0, min_replan_interval_s=2.0, control_tick_s=0.5
    )
    core = ServingCore(repository(tmp_path), config, clock=clock)
    asyncio.run(core.start(run_threads=False))
    server = VirtualServer(core, clock, factor=FACTOR)
    inputs = {"x": np.ones((1, 4), np.float32)}
    for index, (send, source) in enumerate(zip(requests.send_ms.tolist(), requests.source.tolist(), strict=True)):
        server.submit_at(send, InferRequest(called[source], None, inputs, request_id=str(index)))
    server.run(DURATION_MS + 5000.0)

    sessions = {s.spec.name: s for s in core._sessions.values()}
    task_id = next(iter(core._tasks))
    task = Task(
        task_id,
        SLO_MS,
        1.0,
        tuple(Variant(sessions[name].session_id, accuracy) for name, (accuracy, _) in VARIANTS.items()),
    )
    plain = sessions[PLAIN[0]]
    simulation = Simulation(
        Workload(sessions=(Session(plain.session_id, plain.spec.slo_ms, 1.0),), settings=config.settings),
        {s.session_id: s.profile for s in sessions.values()},
        None,
        "squishy",
        mirror_config(config, requests, DURATION_MS + 5000.0, FACTOR),
        tasks=[task],
    )
    simulation.run()

    core_outcomes = assert_same_decisions(simulation, server, requests)

    # Which variant answered: the server's response parameter against the simulator's count per variant.
    answered = Counter(
        outcome.response.parameters[VARIANT_PARAMETER]
        for rid, outcome in server.outcomes.items()
        if outcome.response is not None and requests.source[int(rid)] == 1 and outcome.status == "good"
    )
    summary = simulation.result().summary["tasks"][task_id]
    assert summary["answered_in_time"] == {sessions[name].session_id: answered[name] for name in VARIANTS}

    # The trace exercised what the engine is for: a split beyond capacity, and a fallback in the burst.
    assert answered["big"] > 0 and answered["small"] > 0
    assert sum(summary["fell_back"].values()) > 0
    assert core_outcomes.count("good") > 0.8 * len(core_outcomes) and core_outcomes.count("dropped") > 0
    assert len(server.decisions) >= 2
