"""One engine for prefix batching: the server's core and the simulator decide the same for a prefix group.

Two models share one trunk (cut from their ONNX graphs; its ℓ(b), like theirs, given) and a third
model is served alone beside them. One arrival trace whose rates step up and down runs through
``ServingCore`` (its workers replaced by the hand-driven driver: a group batch takes the trunk's ℓ on
all of its requests plus each member's head on its own, 1.25 × profiled) and through ``Simulation``
told the same prefix group: every request the same outcome, every batch the same requests on the same
slot at the same time, the same re-plans.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from squishy.clock import ManualClock
from squishy.cluster import SlotLayout
from squishy.runtime.api import InferRequest
from squishy.runtime.core import ServingConfig, ServingCore
from squishy.runtime.repository import ModelRepository
from squishy.scheduler import PrefixGroup, Session, Workload
from squishy.sim import RequestTrace, Simulation
from tests.engine.compare import assert_same_decisions, mirror_config, phased_trace
from tests.engine.virtual import VirtualServer
from tests.runtime.onnx_models import add_profiled_model
from tests.runtime.test_prefix import two_heads

FACTOR = 1.25
DURATION_MS = 16_000.0
NAMES = ["head-a", "head-b", "alone"]


def repository(tmp_path: Path) -> ModelRepository:
    two_heads(tmp_path)  # the trunk's ℓ(b) given, as the models' are: nothing measured
    add_profiled_model(tmp_path, "alone", 60.0, {"1": 3.0, "8": 9.0}, max_batch=8)
    return ModelRepository(tmp_path)


def trace(seed: int) -> RequestTrace:
    phases = {
        0: [(0, 6000, 120.0), (6000, 11000, 900.0), (11000, DURATION_MS, 120.0)],
        1: [(0, DURATION_MS, 200.0)],
        2: [(0, DURATION_MS, 60.0)],
    }
    return phased_trace(seed, phases)


def test_the_core_and_the_simulator_decide_the_same_for_a_prefix_group(tmp_path: Path) -> None:
    requests = trace(5)
    clock = ManualClock()
    config = ServingConfig(
        layout=SlotLayout(2, 1), executor="null", epoch_s=6.0, min_replan_interval_s=2.0, control_tick_s=0.5
    )
    core = ServingCore(repository(tmp_path), config, clock=clock)
    asyncio.run(core.start(run_threads=False))
    server = VirtualServer(core, clock, factor=FACTOR)
    for index, (send, source) in enumerate(zip(requests.send_ms.tolist(), requests.source.tolist(), strict=True)):
        server.submit_at(
            send, InferRequest(NAMES[source], None, {"x": np.ones((1, 4), np.float32)}, request_id=str(index))
        )
    server.run(DURATION_MS + 3000.0)

    [(trunk_sid, trunk)] = core._trunks.items()
    sessions = [core._sessions[f"{name}:1"] for name in NAMES]
    workload = Workload(
        sessions=tuple(Session(s.session_id, s.spec.slo_ms, 1.0) for s in sessions),
        prefix_groups=(PrefixGroup(prefix=trunk_sid, models=("head-a:1", "head-b:1")),),
        settings=config.settings,
    )
    profiles = {s.session_id: s.profile for s in sessions} | {trunk_sid: trunk.session.profile}
    simulation = Simulation(
        workload, profiles, None, "squishy", mirror_config(config, requests, DURATION_MS + 3000.0, FACTOR)
    )
    simulation.run()

    outcomes = assert_same_decisions(simulation, server, requests)
    # The trace exercised the group: its batches mixed both members, and the load step re-planned.
    names = [NAMES[s] for s in requests.source.tolist()]
    mixed = [ids for _, _, ids in server.batches if {names[int(i)] for i in ids} == {"head-a", "head-b"}]
    assert len(mixed) > 50
    assert len(server.decisions) >= 2
    assert outcomes.count("good") > 0.8 * len(outcomes)
