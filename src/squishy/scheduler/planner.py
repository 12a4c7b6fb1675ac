"""The scheduler's entry point: workload + profiles in, plan out. Pure: no clocks, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from squishy.errors import WorkloadError
from squishy.profiles import Profile
from squishy.scheduler.baselines import batch_oblivious_nodes
from squishy.scheduler.demand import Demand, build_demands
from squishy.scheduler.packing import Node, Slot, lower_bound, pack, residual_aware_bound
from squishy.scheduler.plan import Allocation, Backend, Member, Plan
from squishy.scheduler.workload import SessionKey, Workload

Policy = Literal["squishy", "batch-oblivious"]
POLICIES: tuple[str, ...] = ("squishy", "batch-oblivious")


def make_plan(
    workload: Workload,
    profiles: Mapping[str, Profile],
    *,
    policy: str = "squishy",
    prefix_batching: bool = True,
    query_analysis: bool = True,
) -> Plan:
    """Plan ``workload`` from scratch.

    ``prefix_batching`` and ``query_analysis`` exist to measure what each idea is worth (ablations);
    the batch-oblivious baseline uses neither.
    """
    if policy not in POLICIES:
        raise WorkloadError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    oblivious = policy == "batch-oblivious"
    demands, split, idle = build_demands(
        workload,
        profiles,
        prefix_batching=prefix_batching and not oblivious,
        even_query_split=oblivious or not query_analysis,
    )
    memory = workload.device.memory_mb
    if oblivious:
        devices = batch_oblivious_nodes(demands, memory)
        backends = [_backend(i, None, slots) for i, (slots, _) in enumerate(devices)]
    else:
        nodes = pack(demands, memory)
        backends = [_backend(i, n.duty_cycle_ms, n.slots) for i, n in enumerate(nodes)]
    return assemble(backends, demands, memory, policy=policy, query_slo_split=split, idle=idle)


def assemble(
    backends: Sequence[Backend],
    demands: Sequence[Demand],
    memory_mb: float | None,
    *,
    policy: str,
    query_slo_split: Mapping[str, Mapping[str, float]],
    idle: Sequence[SessionKey],
) -> Plan:
    by_key = {d.key: d for d in demands}
    memory: dict[int, float] = {}
    for backend in backends:
        used = sum(by_key[a.key].profile.memory(a.batch) for a in backend.allocations)
        if used:
            memory[backend.backend_id] = used
    return Plan(
        backends=tuple(backends),
        lower_bound=lower_bound(demands, memory_mb),
        residual_bound=residual_aware_bound(demands, memory_mb),
        policy=policy,
        query_slo_split={q: dict(s) for q, s in query_slo_split.items()},
        idle_sessions=tuple(idle),
        memory_mb=memory,
    )


def node_backend(backend_id: int, node: Node) -> Backend:
    return _backend(backend_id, node.duty_cycle_ms, node.slots)


def _backend(backend_id: int, cycle: float | None, slots: Sequence[Slot]) -> Backend:
    return Backend(backend_id=backend_id, duty_cycle_ms=cycle, allocations=tuple(allocation(s) for s in slots))


def allocation(slot: Slot) -> Allocation:
    demand = slot.demand
    members: tuple[Member, ...] = ()
    if demand.members:
        share = slot.rate / demand.rate
        members = tuple(Member(m.model, m.slo_ms, m.rate * share) for m in demand.members)
    return Allocation(
        model=demand.model,
        slo_ms=demand.slo_ms,
        rate=slot.rate,
        batch=slot.batch,
        latency_ms=slot.latency_ms,
        budget_ms=demand.budget_ms,
        members=members,
    )
