"""What the differential tests compare: a simulation set up as the server's core ran, and the decisions
both made (per-request outcomes, batch membership, re-plans)."""

from __future__ import annotations

import numpy as np

from squishy.runtime.core import ServingConfig
from squishy.sim import MachineSpec, RequestTrace, SimConfig, Simulation
from squishy.sim.simulation import OUTCOME_DROPPED, OUTCOME_GOOD, OUTCOME_LATE
from tests.engine.virtual import VirtualServer


def mirror_config(config: ServingConfig, requests: RequestTrace, until_ms: float, factor: float) -> SimConfig:
    """The simulator on one machine with the core's slots and control loop, replaying ``requests``."""
    return SimConfig(
        duration_s=until_ms / 1000.0,
        warmup_s=0.0,
        network_ms=0.0,
        model_load_ms=0.0,
        control=config.control(),
        machine=MachineSpec(slots=config.layout.slots),
        trace=requests,
        device_slowdown=factor,
        log_batches=True,
    )


def assert_same_decisions(simulation: Simulation, server: VirtualServer, requests: RequestTrace) -> list[str]:
    """Every request the same outcome, every batch the same requests at the same time on the same slot, the
    same re-plans; returns the outcomes (good, late, dropped) in trace order."""
    table = simulation.requests
    origin = table.origin[: table.count]
    by_index = {int(o): i for i, o in enumerate(origin.tolist())}
    names_of = {OUTCOME_GOOD: "good", OUTCOME_LATE: "late", OUTCOME_DROPPED: "dropped"}
    sim_outcomes = [names_of[int(table.outcome[by_index[i]])] for i in range(len(requests.send_ms))]
    core_outcomes = [server.outcomes[str(i)].status for i in range(len(requests.send_ms))]
    assert sim_outcomes == core_outcomes

    sim_batches = [(slot, start, [str(origin[r]) for r in ids]) for slot, start, ids in simulation.batch_members]
    assert sim_batches == server.batches

    sim_replans = [(r["time_s"] * 1000.0, r["reason"], r["backends"]) for r in simulation.replans]
    core_replans = [(round(t, 3), reason, backends) for t, reason, backends, _ in server.decisions]
    assert sim_replans == core_replans
    return core_outcomes


def phased_trace(seed: int, phases: dict[int, list[tuple[float, float, float]]]) -> RequestTrace:
    """Poisson arrivals per source, each in steps of (start ms, end ms, rate/s), merged in time order."""
    rng = np.random.default_rng(seed)
    sends, sources = [], []
    for source, steps in phases.items():
        for start, end, rate in steps:
            count = rng.poisson(rate * (end - start) / 1000.0)
            sends.append(np.sort(rng.uniform(start, end, count)))
            sources.append(np.full(count, source))
    order = np.argsort(np.concatenate(sends), kind="stable")
    return RequestTrace(np.concatenate(sends)[order], np.concatenate(sources)[order])
