"""One engine, two substrates: the server's core and the simulator decide exactly the same.

The same arrival trace runs through ``ServingCore`` (the real core, its workers replaced by a driver on a
hand-driven clock; every batch takes 1.25 × its profiled ℓ(b), so the observed slowdown moves) and
through ``Simulation`` on one machine of two slots. The trace steps its load up and down, so the control
loop re-plans; one model sends several rows per request, another uses priority levels; bursts make work
stealing, early drop and the sweep matter. Every request must get the same outcome (good, late, dropped),
every batch the same requests on the same slot at the same time, and the re-plans must match.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from squishy.clock import ManualClock
from squishy.cluster import SlotLayout
from squishy.runtime.api import InferRequest
from squishy.runtime.core import ServingConfig, ServingCore
from squishy.runtime.repository import ModelRepository
from squishy.scheduler import Session, Workload
from squishy.sim import RequestTrace, Simulation
from tests.engine.compare import assert_same_decisions, mirror_config
from tests.engine.virtual import VirtualServer
from tests.runtime.onnx_models import add_profiled_model

FACTOR = 1.25  # batches run 25% slower than profiled: early drop must learn it
DURATION_MS = 24_000.0
MODELS = {
    # name: (SLO ms, profile, priority levels)
    "a-fast": (40.0, {"1": 2.0, "8": 6.0, "16": 10.0}, 0),
    "b-rows": (120.0, {"1": 4.0, "4": 9.0, "16": 30.0}, 0),
    "c-ranked": (250.0, {"1": 15.0, "4": 30.0, "8": 50.0}, 2),
}


def repository(tmp_path: Path) -> ModelRepository:
    for name, (slo, table, levels) in MODELS.items():
        extra = f"dynamic_batching {{ priority_levels: {levels} default_priority_level: {levels} }}" if levels else ""
        add_profiled_model(tmp_path, name, slo, table, max_batch=16, extra=extra)
    return ModelRepository(tmp_path)


def trace(seed: int) -> RequestTrace:
    """Poisson arrivals whose rates step up and down (so the control loop re-plans), with bursts."""
    rng = np.random.default_rng(seed)
    sends, sources, rows, priority = [], [], [], []
    # (source, [(start ms, end ms, rate/s)])
    phases = {
        0: [(0, 8000, 150.0), (8000, 16000, 700.0), (16000, DURATION_MS, 150.0)],
        1: [(0, DURATION_MS, 40.0)],
        2: [(0, 12000, 20.0), (12000, 12300, 600.0), (12300, DURATION_MS, 30.0)],
    }
    for source, steps in phases.items():
        for start, end, rate in steps:
            count = rng.poisson(rate * (end - start) / 1000.0)
            times = np.sort(rng.uniform(start, end, count))
            sends.append(times)
            sources.append(np.full(count, source))
            rows.append(rng.integers(1, 4, count) if source == 1 else np.ones(count, dtype=np.int64))
            priority.append(rng.integers(1, 3, count) if source == 2 else np.zeros(count, dtype=np.int64))
    order = np.argsort(np.concatenate(sends), kind="stable")
    return RequestTrace(
        np.concatenate(sends)[order],
        np.concatenate(sources)[order],
        np.concatenate(rows)[order].astype(np.int64),
        np.concatenate(priority)[order].astype(np.int64),
    )


@pytest.mark.parametrize("seed", [3, 11])
def test_the_server_core_and_the_simulator_decide_the_same(tmp_path: Path, seed: int) -> None:
    requests = trace(seed)
    names = list(MODELS)

    # The server's core, on a hand-driven clock.
    clock = ManualClock()
    config = ServingConfig(
        layout=SlotLayout(2, 1), executor="null", epoch_s=6.0, min_replan_interval_s=2.0, control_tick_s=0.5
    )
    core = ServingCore(repository(tmp_path), config, clock=clock)
    asyncio.run(core.start(run_threads=False))
    server = VirtualServer(core, clock, factor=FACTOR)
    for index, (send, source) in enumerate(zip(requests.send_ms.tolist(), requests.source.tolist(), strict=True)):
        rows = int(requests.rows[index]) if requests.rows is not None else 1
        level = int(requests.priority[index]) if requests.priority is not None else 0
        inputs = {"x": np.ones((rows, 4), np.float32)}
        server.submit_at(send, InferRequest(names[source], None, inputs, request_id=str(index), priority=level))
    server.run(DURATION_MS + 5000.0)

    # The simulator, on one machine with the server's slots, control loop and profiles.
    sessions = list(core._sessions.values())
    assert [s.spec.name for s in sessions] == names
    workload = Workload(
        sessions=tuple(Session(s.session_id, s.spec.slo_ms, 1.0) for s in sessions), settings=config.settings
    )
    simulation = Simulation(
        workload,
        {s.session_id: s.profile for s in sessions},
        None,
        "squishy",
        mirror_config(config, requests, DURATION_MS + 5000.0, FACTOR),
    )
    simulation.run()

    core_outcomes = assert_same_decisions(simulation, server, requests)

    # The trace exercised what the engine is for.
    counts = {status: core_outcomes.count(status) for status in ("good", "late", "dropped")}
    assert counts["good"] > 0.8 * len(core_outcomes) and counts["dropped"] > 0
    assert len(server.decisions) >= 2
    assert sum(w.batches_stolen for w in core.workers) > 0
    assert max(s.latency.slowdown for s in sessions) > 1.1  # the observed slowdown moved early drop
