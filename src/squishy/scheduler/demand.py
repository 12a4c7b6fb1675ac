"""Turn a workload into demands: the units the packing places.

A demand is one session (model, SLO, rate) with the profile the packing must use (margins applied) and
the budget it must fit (the SLO minus network and pre/post-processing time). A prefix group becomes one
demand whose profile is synthesized from the trunk's and each member's suffix cost. Complex queries are
split into per-stage sessions by query analysis first.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace

from squishy.errors import InfeasibleError, ProfileError, WorkloadError
from squishy.profiles import Profile
from squishy.scheduler.plan import Allocation, Member
from squishy.scheduler.queries import split_query
from squishy.scheduler.workload import Session, SessionKey, Settings, Workload

# Tolerance for comparing milliseconds: the paper's worked example fits with exactly zero slack.
EPS_MS = 1e-6


@dataclass(frozen=True)
class Demand:
    model: str  # the model, or the shared trunk's name for a prefix group
    slo_ms: float
    budget_ms: float  # what ℓ and the duty cycle must fit: slo_ms minus margins
    rate: float
    profile: Profile  # margins applied; synthesized for a prefix group
    members: tuple[Member, ...] = ()

    @property
    def key(self) -> SessionKey:
        return SessionKey(self.model, self.slo_ms)


def margin_ms(profile: Profile, settings: Settings) -> float:
    return settings.network_ms + profile.preprocess_ms + profile.postprocess_ms


def scheduled_profile(profile: Profile, settings: Settings) -> Profile:
    """The profile the packing uses: margins applied, and no faster than the backend's host CPU can
    prepare the batch (``host_limited``)."""
    margined = profile.with_margin(settings.profile_inflation, settings.std_multiplier)
    return host_limited(margined, settings.profile_inflation * host_ms(profile, settings), settings.host_cores)


def host_ms(profile: Profile, settings: Settings) -> float:
    """Host CPU one request of this model costs its backend: the frontend's handling and its share of
    pre/post-processing (0 when the host is not a constraint). The packing inflates it as it inflates ℓ:
    a host kept 100% busy queues without bound."""
    if settings.host_cores <= 0:
        return 0.0
    return settings.frontend_ms + profile.processing_share_ms


def host_limited(profile: Profile, per_request_ms: float, cores: float) -> Profile:
    """ℓ'(b) = max(ℓ(b), b·w/C): a backend whose host has C cores, w ms of CPU per request, cannot run b
    requests in less than b·w/C however fast its device is. The packing then keeps each backend's
    requests within its host CPU (Σ r·w ≤ C) as it keeps its batches within the duty cycle."""
    if per_request_ms <= 0 or cores <= 0:
        return profile
    floor = per_request_ms / cores
    table = {b: max(v, b * floor) for b, v in profile.batch_ms.items()}
    if all(table[b] == v for b, v in profile.batch_ms.items()):
        return profile
    return replace(
        profile, batch_ms=table, source=f"{profile.source}; no faster than its host CPU ({floor:g} ms/input)"
    )


def saturating_batch(profile: Profile, budget_ms: float, memory_mb: float | None) -> int | None:
    """The largest allowed batch B with 2ℓ(B) ≤ budget that fits in memory: a full backend's batch."""
    batch = profile.max_batch_within(budget_ms / 2.0, tolerance_ms=EPS_MS)
    if batch is None or memory_mb is None:
        return batch
    allowed = [b for b in profile.allowed_batches if b <= batch and profile.memory(b) <= memory_mb + EPS_MS]
    return allowed[-1] if allowed else None


def check_feasible(demand: Demand, memory_mb: float | None) -> int:
    """Return the saturating batch, or say exactly why no plan can meet the demand's SLO."""
    batch = saturating_batch(demand.profile, demand.budget_ms, memory_mb)
    if batch is not None:
        return batch
    profile = demand.profile
    smallest = profile.min_batch
    need = 2 * profile.latency_ms(smallest)
    name = f"session {demand.model} (SLO {demand.slo_ms:g} ms)"
    if memory_mb is not None and profile.memory(smallest) > memory_mb:
        raise InfeasibleError(
            f"{name}: needs {profile.memory(smallest):g} MB at batch {smallest}, more than a backend's {memory_mb:g} MB"
        )
    margin = demand.slo_ms - demand.budget_ms
    margin_note = f" after {margin:g} ms of margins" if margin > 0 else ""
    raise InfeasibleError(
        f"{name}: no plan can meet it: the budget is {demand.budget_ms:g} ms{margin_note}, below "
        f"2 x ℓ({smallest}) = {need:g} ms on {profile.device}"
    )


def build_demands(
    workload: Workload,
    profiles: Mapping[str, Profile],
    *,
    prefix_batching: bool = True,
    even_query_split: bool = False,
) -> tuple[list[Demand], dict[str, dict[str, float]], list[SessionKey]]:
    """Demands to pack (rate > 0), the query SLO split, and the idle (rate 0) sessions."""
    missing = sorted(m for m in workload.models if m not in profiles)
    if missing:
        raise WorkloadError(f"no profile for model(s) {', '.join(missing)}")
    settings = workload.settings
    capacity = workload.device.memory_mb

    sessions = list(workload.sessions)
    query_split: dict[str, dict[str, float]] = {}
    for query in workload.queries:
        stage_sessions, split = split_query(query, profiles, settings, even=even_query_split, memory_mb=capacity)
        sessions.extend(stage_sessions)
        query_split[query.name] = split

    # Requests for the same model at the same SLO form one session, whichever app sent them.
    rates: dict[SessionKey, float] = defaultdict(float)
    for session in sessions:
        rates[session.key] += session.rate

    groups = {m: g for g in workload.prefix_groups for m in g.models} if prefix_batching else {}
    demands: list[Demand] = []
    idle: list[SessionKey] = []
    grouped: dict[str, list[Session]] = defaultdict(list)
    for key, rate in sorted(rates.items()):
        if key.model in groups:
            grouped[groups[key.model].prefix].append(Session(key.model, key.slo_ms, rate))
            continue
        if rate <= 0:
            idle.append(key)
            continue
        profile = profiles[key.model]
        demand = Demand(
            model=key.model,
            slo_ms=key.slo_ms,
            budget_ms=key.slo_ms - margin_ms(profile, settings),
            rate=rate,
            profile=scheduled_profile(profile, settings),
        )
        check_feasible(demand, capacity)
        demands.append(demand)

    for prefix, members in grouped.items():
        total = sum(m.rate for m in members)
        if total <= 0:
            idle.extend(m.key for m in members)
            continue
        demand = prefix_demand(prefix, members, profiles, settings)
        check_feasible(demand, capacity)
        demands.append(demand)
    return demands, query_split, idle


def head_key(model: str) -> str:
    """Where a prefix group member's head's own ℓ(b) is found in the profiles, when it was measured."""
    return f"{model}#head"


def prefix_demand(prefix: str, members: list[Session], profiles: Mapping[str, Profile], settings: Settings) -> Demand:
    """One demand for a prefix group: the trunk runs once on the summed batch, each suffix on its slice.

    ℓ_group(b) = ℓ_trunk(b) + Σ_i suffix_i(⌈b·r_i/R⌉), with suffix_i the member's head's own ℓ when the
    profiles hold it (``head_key``), else ℓ_i(n) − ℓ_trunk(n): its whole model's minus the trunk's. A
    measured head is preferred because the difference of two measurements of nearly the same model is
    mostly their noise, and a group adds that noise up over its members. The group's SLO is the
    tightest of its members'.
    """
    device_only = replace(settings, host_cores=0.0)  # the host limits the whole group, below
    trunk = scheduled_profile(profiles[prefix], device_only)
    active = [m for m in members if m.rate > 0]
    total = sum(m.rate for m in active)
    member_profiles = {m.model: scheduled_profile(profiles[m.model], device_only) for m in active}
    heads = {
        m.model: scheduled_profile(profiles[head_key(m.model)], device_only)
        for m in active
        if head_key(m.model) in profiles
    }
    table: dict[int, float] = {}
    memory: dict[int, float] = {}
    for batch in trunk.allowed_batches:
        latency = trunk.latency_ms(batch)
        mem = trunk.memory(batch)
        try:
            for member in active:
                share = max(1, math.ceil(batch * member.rate / total - 1e-9))
                full = member_profiles[member.model]
                head = heads.get(member.model)
                if head is not None:
                    latency += head.batch_latency_ms(share)
                    mem += head.memory(share)
                else:
                    latency += max(0.0, full.batch_latency_ms(share) - trunk.batch_latency_ms(share))
                    mem += max(0.0, full.memory(share) - trunk.memory(share))
        except ProfileError:
            break  # a member cannot take its share of a batch this large
        table[batch] = latency
        memory[batch] = mem
    if not table:
        raise WorkloadError(f"prefix group {prefix!r}: no batch size works for every member")
    slo = min(m.slo_ms for m in active)
    margin = settings.network_ms + max(
        trunk.preprocess_ms + trunk.postprocess_ms,
        *(p.preprocess_ms + p.postprocess_ms for p in member_profiles.values()),
    )
    profile = Profile.from_dict(
        {
            "model": prefix,
            "device": trunk.device,
            "precision": trunk.precision,
            "batch_ms": {str(b): v for b, v in table.items()},
            "memory_mb": {str(b): v for b, v in memory.items()} if any(memory.values()) else None,
            "source": f"prefix group of {', '.join(m.model for m in active)} over trunk {prefix}",
        }
    )
    per_request = (
        settings.profile_inflation * sum(m.rate * host_ms(profiles[m.model], settings) for m in active) / total
    )
    return Demand(
        model=prefix,
        slo_ms=slo,
        budget_ms=slo - margin,
        rate=total,
        profile=host_limited(profile, per_request, settings.host_cores),
        members=tuple(Member(m.model, m.slo_ms, m.rate) for m in active),
    )


def allocation_profile(allocation: Allocation, profiles: Mapping[str, Profile], settings: Settings) -> Profile:
    """The profile the scheduler sized ``allocation`` with, margins included: its model's, or for a prefix
    group the one ``prefix_demand`` synthesizes at the plan's mix (its members' rates)."""
    if allocation.members:
        sessions = [Session(m.model, m.slo_ms, m.rate) for m in allocation.members]
        return prefix_demand(allocation.model, sessions, profiles, settings).profile
    return scheduled_profile(profiles[allocation.model], settings)
