"""How the Ray Serve peer is configured: rules from squishy's measured profile, never tuned by trial.

Batching (per model, from the profile ℓ(b) squishy plans with, 1 intra-op thread):
    b = the largest measured batch with 2·ℓ(b) + o ≤ SLO           → ``max_batch_size``
    t = SLO − 2·ℓ(b) − o                                          → ``batch_wait_timeout_s``
where o is Ray Serve's own per-request latency for that model (proxy, replica hop, request body
transfer). The reasoning is Nexus's: a request can wait one batch for a busy replica and then run in
the next, so 2·ℓ(b) must fit, and the time left over is what the first request of a batch may wait
for others. When even batch 1 does not fit (o alone eats the SLO), batching stays on with no wait
(b from the bare rule 2ℓ(b) ≤ SLO, t = 0: Ray then batches whatever queued while a batch ran).

o is *measured*, not searched for: Ray is started with every wait at 0, a light Poisson load (10 req/s
per model) is sent, and o = p99 latency − ℓ(1) per model. With o = 0 this is the bare rule "2ℓ(b) ≤
SLO, timeout SLO − 2ℓ(b)", which ignores that Ray's HTTP path alone takes 11–13 ms here: for digits
(SLO 20 ms, ℓ ≈ 0.02 ms) every batch would wait ~20 ms and miss the SLO at any rate.

Replicas (the 2 cores shared by every model): each model gets
    replicas = max(1, round(cores × its share of the compute demand)),
demand = rate × ℓ(b)/b (core-seconds per second at full batches). One core's worth of demand earns one
replica of 1 thread. Each replica reserves cores / (all replicas) logical CPUs, so they all fit on
``ray.init(num_cpus=cores)`` (the OS shares the cores; Ray's CPUs are only a scheduling count).

``max_ongoing_requests`` is 1000 (the value Ray's performance guide shows): Ray caps a replica's batch
at its ongoing requests (default 5), and a low cap makes the router back off (25 ms and up) when every
replica is full, which no SLO here survives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

# Calibration load per model (req/s) for measuring o; light enough that nothing queues.
CALIBRATION_RATE_PER_S = 10.0
MAX_ONGOING_REQUESTS = 1000
MAX_CONCURRENT_BATCHES = 1  # one replica = one ORT thread = one batch at a time


@dataclass(frozen=True)
class RayModelPlan:
    model: str
    slo_ms: float
    max_batch_size: int
    batch_wait_timeout_s: float
    batch_latency_ms: float  # ℓ(max_batch_size) from the profile
    overhead_ms: float  # o, Ray's own per-request latency for this model
    replicas: int
    num_cpus: float  # logical CPUs reserved per replica
    max_ongoing_requests: int = MAX_ONGOING_REQUESTS
    max_concurrent_batches: int = MAX_CONCURRENT_BATCHES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RayModelPlan:
        return cls(**data)


def batch_rule(batch_ms: Mapping[int, float], slo_ms: float, overhead_ms: float) -> tuple[int, float, float]:
    """(max_batch_size, ℓ of it in ms, batch_wait_timeout_s) for one model."""
    sizes = sorted(batch_ms)
    fitting = [b for b in sizes if 2 * batch_ms[b] + overhead_ms <= slo_ms]
    if fitting:
        batch = fitting[-1]
        return batch, batch_ms[batch], (slo_ms - 2 * batch_ms[batch] - overhead_ms) / 1000.0
    # o leaves no room to wait: batch what is already queued, never wait for more.
    bare = [b for b in sizes if 2 * batch_ms[b] <= slo_ms]
    batch = bare[-1] if bare else sizes[0]
    return batch, batch_ms[batch], 0.0


def no_wait(plans: list[RayModelPlan]) -> list[RayModelPlan]:
    """The same deployments with every batch wait at 0: how Ray is run to measure o."""
    return [replace(p, batch_wait_timeout_s=0.0) for p in plans]


def overheads_from_p99(p99_ms: Mapping[str, float], profiles: Mapping[str, Mapping[int, float]]) -> dict[str, float]:
    """o per model: the p99 latency measured with no batch wait, less ℓ(1) (what the model itself took)."""
    return {m: max(0.0, p99_ms[m] - profiles[m][min(profiles[m])]) for m in p99_ms}


def replica_split(demand: Mapping[str, float], cores: int) -> dict[str, int]:
    """Replicas per model: at least one each, one per core's worth of the demand's share."""
    total = sum(demand.values())
    if total <= 0:
        return {model: 1 for model in demand}
    return {model: max(1, round(cores * d / total)) for model, d in demand.items()}


def ray_plan(
    profiles: Mapping[str, Mapping[int, float]],
    slos_ms: Mapping[str, float],
    rates: Mapping[str, float],
    *,
    cores: int,
    overhead_ms: float | Mapping[str, float] = 0.0,
) -> list[RayModelPlan]:
    """The Ray Serve deployment settings of a mix (``rates`` only give proportions); ``overhead_ms`` is o,
    one value for every model or one per model."""
    overheads = overhead_ms if isinstance(overhead_ms, Mapping) else dict.fromkeys(profiles, float(overhead_ms))
    rules = {m: batch_rule(profiles[m], slos_ms[m], overheads[m]) for m in profiles}
    demand = {m: rates[m] * latency_ms / batch / 1000.0 for m, (batch, latency_ms, _) in rules.items()}
    replicas = replica_split(demand, cores)
    total_replicas = sum(replicas.values())
    # Rounded down to 1/100: Ray's resource accounting would refuse a sum above the cores.
    share = math.floor(100 * cores / total_replicas) / 100
    return [
        RayModelPlan(
            model=m,
            slo_ms=slos_ms[m],
            max_batch_size=batch,
            batch_wait_timeout_s=round(wait_s, 6),
            batch_latency_ms=latency_ms,
            overhead_ms=overheads[m],
            replicas=replicas[m],
            num_cpus=share,
        )
        for m, (batch, latency_ms, wait_s) in rules.items()
    ]
