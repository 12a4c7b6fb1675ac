"""The plan: the scheduler's whole output, and the contract every executor (runtime, simulator) reads.

A plan is a list of backends. Each backend runs its allocations round-robin inside one duty cycle:
one batch of ``batch`` inputs per allocation per cycle. A session split across several backends
appears once per backend with that backend's share of the rate.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from squishy.scheduler.workload import SessionKey


@dataclass(frozen=True)
class Member:
    """One model's share of a prefix-batched allocation (the trunk runs once for all members)."""

    model: str
    slo_ms: float
    rate: float  # requests/s of this model on this backend


@dataclass(frozen=True)
class Allocation:
    """One session's share on one backend."""

    model: str  # the model, or the shared trunk's name for a prefix group
    slo_ms: float  # the SLO users asked for (identifies the session with ``model``)
    rate: float  # requests/s routed to this backend
    batch: int  # inputs per batch: the most this session runs per duty cycle
    latency_ms: float  # scheduled ℓ(batch), margins included
    budget_ms: float  # slo_ms minus network and pre/post-processing: what the packing had to fit
    members: tuple[Member, ...] = ()  # non-empty for a prefix group: which models share the trunk

    @property
    def key(self) -> SessionKey:
        return SessionKey(self.model, self.slo_ms)

    def serves(self, model: str) -> bool:
        return self.model == model or any(m.model == model for m in self.members)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "slo_ms": _clean(self.slo_ms),
            "rate": round(self.rate, 6),
            "batch": self.batch,
            "latency_ms": round(self.latency_ms, 6),
        }
        if self.budget_ms != self.slo_ms:
            out["budget_ms"] = round(self.budget_ms, 6)
        if self.members:
            out["members"] = [
                {"model": m.model, "slo_ms": _clean(m.slo_ms), "rate": round(m.rate, 6)} for m in self.members
            ]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Allocation:
        return cls(
            model=data["model"],
            slo_ms=float(data["slo_ms"]),
            rate=float(data["rate"]),
            batch=int(data["batch"]),
            latency_ms=float(data["latency_ms"]),
            budget_ms=float(data.get("budget_ms", data["slo_ms"])),
            members=tuple(Member(m["model"], float(m["slo_ms"]), float(m["rate"])) for m in data.get("members", [])),
        )


@dataclass(frozen=True)
class Backend:
    """One execution slot (a GPU in the paper, a CPU worker here) and what it runs."""

    backend_id: int
    # Length of one round over the allocations. None: no duty cycle, batches run first come, first
    # served (the batch-oblivious baseline's backends).
    duty_cycle_ms: float | None
    allocations: tuple[Allocation, ...]

    @property
    def busy_ms(self) -> float:
        return sum(a.latency_ms for a in self.allocations)

    @property
    def occupancy(self) -> float:
        """Σℓ(b)/d: the busy share of a duty cycle."""
        if not self.duty_cycle_ms:
            return 0.0
        return self.busy_ms / self.duty_cycle_ms

    def to_dict(self, memory_mb: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backend_id": self.backend_id,
            "duty_cycle_ms": None if self.duty_cycle_ms is None else round(self.duty_cycle_ms, 6),
            "occupancy": round(self.occupancy, 6),
            "sessions": [a.to_dict() for a in self.allocations],
        }
        if memory_mb:
            out["memory_mb"] = round(memory_mb, 3)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], index: int) -> Backend:
        cycle = data.get("duty_cycle_ms")
        return cls(
            backend_id=int(data.get("backend_id", index)),
            duty_cycle_ms=None if cycle is None else float(cycle),
            allocations=tuple(Allocation.from_dict(a) for a in data["sessions"]),
        )


@dataclass(frozen=True)
class Plan:
    backends: tuple[Backend, ...]
    # Σ_i R_i / T_i(B_i): no plan can use fewer backends.
    lower_bound: float
    policy: str = "squishy"
    # query name → stage name → ms of the end-to-end SLO given to that stage.
    query_slo_split: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # Sessions with rate 0: known, but given no capacity.
    idle_sessions: tuple[SessionKey, ...] = ()
    # Memory each backend needs (MB), by backend_id, when profiles record memory.
    memory_mb: Mapping[int, float] = field(default_factory=dict)
    # A tighter bound that counts what small rates cost within their SLO (``residual_aware_bound``).
    residual_bound: float = 0.0

    @property
    def num_backends(self) -> int:
        return len(self.backends)

    def allocations(self) -> Iterator[tuple[Backend, Allocation]]:
        for backend in self.backends:
            for allocation in backend.allocations:
                yield backend, allocation

    def rates_by_session(self) -> dict[SessionKey, float]:
        """Total rate allocated to each session (or prefix group) across backends."""
        totals: dict[SessionKey, float] = defaultdict(float)
        for _, allocation in self.allocations():
            totals[allocation.key] += allocation.rate
        return dict(totals)

    def routes(self, model: str, slo_ms: float | None = None) -> list[tuple[Backend, Allocation, float]]:
        """Where requests for ``model`` go: (backend, allocation, rate share of this model there)."""
        out = []
        for backend, allocation in self.allocations():
            if allocation.members:
                for member in allocation.members:
                    if member.model == model and (slo_ms is None or member.slo_ms == slo_ms):
                        out.append((backend, allocation, member.rate))
            elif allocation.model == model and (slo_ms is None or allocation.slo_ms == slo_ms):
                out.append((backend, allocation, allocation.rate))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "backends": [b.to_dict(self.memory_mb.get(b.backend_id)) for b in self.backends],
            "num_backends": self.num_backends,
            "lower_bound": round(self.lower_bound, 6),
            "residual_bound": round(self.residual_bound, 6),
            "query_slo_split": {
                q: {s: round(v, 6) for s, v in split.items()} for q, split in self.query_slo_split.items()
            },
            "idle_sessions": [{"model": k.model, "slo_ms": _clean(k.slo_ms)} for k in self.idle_sessions],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        return cls(
            backends=tuple(Backend.from_dict(b, i) for i, b in enumerate(data["backends"])),
            lower_bound=float(data.get("lower_bound", 0.0)),
            residual_bound=float(data.get("residual_bound", 0.0)),
            policy=str(data.get("policy", "squishy")),
            query_slo_split={q: dict(v) for q, v in data.get("query_slo_split", {}).items()},
            idle_sessions=tuple(SessionKey(s["model"], float(s["slo_ms"])) for s in data.get("idle_sessions", [])),
            memory_mb={
                int(b.get("backend_id", i)): float(b["memory_mb"])
                for i, b in enumerate(data["backends"])
                if "memory_mb" in b
            },
        )


def _clean(value: float) -> float | int:
    """Print 200.0 as 200 in JSON, as users wrote it."""
    return int(value) if float(value).is_integer() else value
