"""Hypothesis strategies for random workloads that hit the packing's edge cases."""

from __future__ import annotations

from hypothesis import strategies as st

from squishy.profiles import Profile
from squishy.scheduler import Device, Session, Workload
from squishy.scheduler.demand import saturating_batch

BATCH_CHOICES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


@st.composite
def profiles(draw: st.DrawFn, name: str, with_memory: bool) -> Profile:
    """Random curves: linear, sub-linear, or noisy and non-monotone, over a restricted set of sizes."""
    batches = sorted(draw(st.sets(st.sampled_from(BATCH_CHOICES), min_size=1, max_size=8)))
    alpha = draw(st.floats(0.2, 10.0))
    beta = draw(st.floats(0.5, 40.0))
    shape = draw(st.sampled_from(["linear", "sublinear", "noisy"]))
    table = {}
    for b in batches:
        if shape == "linear":
            latency = alpha * b + beta
        elif shape == "sublinear":
            latency = beta * b ** draw(st.floats(0.3, 1.0))
        else:  # published curves wobble: latency may fall as the batch grows
            latency = (alpha * b + beta) * draw(st.floats(0.6, 1.6))
        table[str(b)] = latency
    data: dict[str, object] = {"model": name, "device": "gpu", "batch_ms": table}
    data["interpolate"] = draw(st.booleans()) and len(batches) > 1
    if with_memory:
        weights = draw(st.floats(100, 2000))
        per_input = draw(st.floats(1, 100))
        data["memory_mb"] = {str(b): weights + per_input * b for b in batches}
    return Profile.from_dict(data)


@st.composite
def workloads(draw: st.DrawFn, max_sessions: int = 8) -> tuple[Workload, dict[str, Profile]]:
    """A workload with rates just below/above a backend's throughput, rate 0, restricted batch sizes,
    non-monotone profiles and (sometimes) a binding memory capacity."""
    count = draw(st.integers(1, max_sessions))
    with_memory = draw(st.booleans())
    catalog = {f"m{i}": draw(profiles(f"m{i}", with_memory)) for i in range(count)}
    capacity = None
    if with_memory:
        smallest = max(p.memory(p.min_batch) for p in catalog.values())
        largest = max(p.memory(p.max_batch) for p in catalog.values())
        capacity = draw(st.floats(smallest, max(smallest, largest) * 2.5))
    sessions = []
    for name, profile in catalog.items():
        slo = 2 * profile.latency_ms(profile.min_batch) * draw(st.floats(1.0, 8.0))
        batch = saturating_batch(profile, slo, capacity)
        assert batch is not None
        throughput = profile.throughput(batch)
        kind = draw(st.sampled_from(["zero", "near", "low", "any"]))
        if kind == "zero":
            rate = 0.0
        elif kind == "near":  # just below or above k whole backends
            k = draw(st.integers(1, 3))
            rate = throughput * k * draw(st.sampled_from([0.97, 0.999, 1.0, 1.001, 1.03]))
        elif kind == "low":
            rate = throughput * draw(st.floats(0.001, 0.1))
        else:
            rate = throughput * draw(st.floats(0.05, 4.0))
        sessions.append(Session(name, slo, rate))
    return Workload(sessions=tuple(sessions), device=Device(memory_mb=capacity)), catalog
