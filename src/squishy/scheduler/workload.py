"""What the scheduler is asked to serve: sessions, complex queries, prefix groups, device and margins.

Pure data and validation of already-parsed mappings; reading files happens in ``squishy.workload_file``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from squishy.errors import WorkloadError


def _number(value: Any, what: str, *, minimum: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise WorkloadError(f"{what} must be a number, got {value!r}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        relation = ">" if strict else ">="
        raise WorkloadError(f"{what} must be {relation} {minimum:g}, got {value:g}")
    return float(value)


@dataclass(frozen=True)
class Session:
    """All requests for one model at one latency SLO, arriving at ``rate`` requests per second."""

    model: str
    slo_ms: float
    rate: float

    @property
    def key(self) -> SessionKey:
        return SessionKey(self.model, self.slo_ms)


@dataclass(frozen=True, order=True)
class SessionKey:
    model: str
    slo_ms: float

    def __str__(self) -> str:
        return f"{self.model}@{self.slo_ms:g}ms"


@dataclass(frozen=True)
class Settings:
    """Margins taken off every SLO before packing, and the profile safety factor.

    ``network_ms`` is the time a request spends between the client and the backend; the profile's pre-
    and post-processing times come off the SLO as well. ``profile_inflation`` multiplies every ℓ(b) and
    ``std_multiplier`` adds that many standard deviations first (mean + k·σ).
    """

    network_ms: float = 0.0
    profile_inflation: float = 1.0
    std_multiplier: float = 0.0
    # Time step of query analysis's dynamic program; 0 picks one (1 ms, coarser for very long SLOs).
    query_step_ms: float = 0.0
    # Host CPU per backend (a GPU server's cores), when it can limit a backend: each request costs
    # ``frontend_ms`` plus its share of pre/post-processing (``Profile.processing_share_ms``).
    # 0 cores: the host is not a constraint.
    host_cores: float = 0.0
    frontend_ms: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Settings:
        data = data or {}
        if not isinstance(data, Mapping):
            raise WorkloadError("settings must be a mapping")
        known = {"network_ms", "profile_inflation", "std_multiplier", "query_step_ms", "host_cores", "frontend_ms"}
        unknown = set(data) - known
        if unknown:
            raise WorkloadError(f"settings: unknown key(s) {', '.join(sorted(unknown))}")
        return cls(
            network_ms=_number(data.get("network_ms", 0.0), "settings.network_ms", minimum=0),
            profile_inflation=_number(
                data.get("profile_inflation", 1.0), "settings.profile_inflation", minimum=0, strict=True
            ),
            std_multiplier=_number(data.get("std_multiplier", 0.0), "settings.std_multiplier", minimum=0),
            query_step_ms=_number(data.get("query_step_ms", 0.0), "settings.query_step_ms", minimum=0),
            host_cores=_number(data.get("host_cores", 0.0), "settings.host_cores", minimum=0),
            frontend_ms=_number(data.get("frontend_ms", 0.0), "settings.frontend_ms", minimum=0),
        )


@dataclass(frozen=True)
class Device:
    """The kind of backend sessions are packed onto: which profiles apply and how much memory it has."""

    name: str | None = None
    memory_mb: float | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Device:
        data = data or {}
        if not isinstance(data, Mapping):
            raise WorkloadError("device must be a mapping such as {name: t4, memory_mb: 16000}")
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            raise WorkloadError("device.name must be a string")
        memory = data.get("memory_mb")
        return cls(
            name=name, memory_mb=None if memory is None else _number(memory, "device.memory_mb", minimum=0, strict=True)
        )


@dataclass(frozen=True)
class PrefixGroup:
    """Models that share all but their last layers; ``prefix`` names the shared trunk's profile."""

    prefix: str
    models: tuple[str, ...]


@dataclass(frozen=True)
class QueryStage:
    """One model in a complex query; ``gamma`` is its outputs-per-input fan-out from the parent stage."""

    model: str
    gamma: float = 1.0
    children: tuple[QueryStage, ...] = ()

    def walk(self) -> list[QueryStage]:
        out = [self]
        for child in self.children:
            out.extend(child.walk())
        return out


@dataclass(frozen=True)
class Query:
    """A tree of models served end to end within ``slo_ms`` at ``rate`` queries per second."""

    name: str
    slo_ms: float
    rate: float
    root: QueryStage


@dataclass(frozen=True)
class Workload:
    sessions: tuple[Session, ...] = ()
    queries: tuple[Query, ...] = ()
    prefix_groups: tuple[PrefixGroup, ...] = ()
    device: Device = field(default_factory=Device)
    settings: Settings = field(default_factory=Settings)

    def with_rates(self, rates: Mapping[SessionKey, float]) -> Workload:
        """The same workload with some sessions' rates replaced (sessions not in ``rates`` keep theirs)."""
        sessions = tuple(replace(s, rate=rates.get(s.key, s.rate)) for s in self.sessions)
        return replace(self, sessions=sessions)

    def scaled(self, factor: float) -> Workload:
        """Every session and query rate multiplied by ``factor``."""
        return replace(
            self,
            sessions=tuple(replace(s, rate=s.rate * factor) for s in self.sessions),
            queries=tuple(replace(q, rate=q.rate * factor) for q in self.queries),
        )

    @property
    def models(self) -> set[str]:
        names = {s.model for s in self.sessions}
        for query in self.queries:
            names.update(stage.model for stage in query.root.walk())
        for group in self.prefix_groups:
            names.add(group.prefix)
            names.update(group.models)
        return names

    # ------------------------------------------------------------------------------------- parsing
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Workload:
        if not isinstance(data, Mapping):
            raise WorkloadError("a workload must be a mapping with a 'sessions' list")
        unknown = set(data) - {
            "profiles",
            "device",
            "settings",
            "sessions",
            "prefix_groups",
            "queries",
            "name",
            "description",
            "simulation",  # scenario files add how to simulate the workload (read by squishy.sim)
        }
        if unknown:
            raise WorkloadError(f"unknown workload key(s): {', '.join(sorted(unknown))}")
        sessions = tuple(_parse_session(i, s) for i, s in enumerate(_list(data.get("sessions"), "sessions")))
        queries = tuple(_parse_query(i, q) for i, q in enumerate(_list(data.get("queries"), "queries")))
        groups = tuple(_parse_group(i, g) for i, g in enumerate(_list(data.get("prefix_groups"), "prefix_groups")))
        if not sessions and not queries:
            raise WorkloadError("the workload has no sessions and no queries")
        names = [q.name for q in queries]
        if len(set(names)) != len(names):
            raise WorkloadError("query names must be unique")
        grouped = [m for g in groups for m in g.models]
        if len(set(grouped)) != len(grouped):
            raise WorkloadError("a model may belong to at most one prefix group")
        return cls(
            sessions=sessions,
            queries=queries,
            prefix_groups=groups,
            device=Device.from_dict(data.get("device")),
            settings=Settings.from_dict(data.get("settings")),
        )


def _list(value: Any, what: str) -> Sequence[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise WorkloadError(f"{what} must be a list")
    return value


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise WorkloadError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _parse_session(index: int, raw: Any) -> Session:
    where = f"sessions[{index}]"
    if not isinstance(raw, Mapping):
        raise WorkloadError(f"{where} must be a mapping like {{model: m, slo_ms: 100, rate: 50}}")
    unknown = set(raw) - {"model", "slo_ms", "rate"}
    if unknown:
        raise WorkloadError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    for key in ("model", "slo_ms", "rate"):
        if key not in raw:
            raise WorkloadError(f"{where}: missing '{key}'")
    model = _name(raw["model"], f"{where}.model")
    return Session(
        model=model,
        slo_ms=_number(raw["slo_ms"], f"{where} ({model}): slo_ms", minimum=0, strict=True),
        rate=_number(raw["rate"], f"{where} ({model}): rate", minimum=0),
    )


def _parse_stage(raw: Any, where: str, *, is_root: bool) -> QueryStage:
    if not isinstance(raw, Mapping):
        raise WorkloadError(f"{where} must be a mapping like {{model: m, children: [...]}}")
    unknown = set(raw) - {"model", "gamma", "children"}
    if unknown:
        raise WorkloadError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    model = _name(raw.get("model"), f"{where}.model")
    gamma = _number(raw.get("gamma", 1.0), f"{where} ({model}): gamma", minimum=0)
    if is_root and "gamma" in raw:
        raise WorkloadError(f"{where}: the root stage takes the query's rate; gamma belongs on child stages")
    children = tuple(
        _parse_stage(c, f"{where}.children[{i}]", is_root=False)
        for i, c in enumerate(_list(raw.get("children"), f"{where}.children"))
    )
    return QueryStage(model=model, gamma=gamma, children=children)


def _parse_query(index: int, raw: Any) -> Query:
    where = f"queries[{index}]"
    if not isinstance(raw, Mapping):
        raise WorkloadError(f"{where} must be a mapping with name, slo_ms, rate and root")
    unknown = set(raw) - {"name", "slo_ms", "rate", "root"}
    if unknown:
        raise WorkloadError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    name = _name(raw.get("name"), f"{where}.name")
    if "root" not in raw:
        raise WorkloadError(f"{where} ({name}): missing 'root'")
    return Query(
        name=name,
        slo_ms=_number(raw.get("slo_ms"), f"{where} ({name}): slo_ms", minimum=0, strict=True),
        rate=_number(raw.get("rate"), f"{where} ({name}): rate", minimum=0),
        root=_parse_stage(raw["root"], f"{where}.root", is_root=True),
    )


def _parse_group(index: int, raw: Any) -> PrefixGroup:
    where = f"prefix_groups[{index}]"
    if not isinstance(raw, Mapping):
        raise WorkloadError(f"{where} must be a mapping like {{prefix: trunk, models: [a, b]}}")
    prefix = _name(raw.get("prefix"), f"{where}.prefix")
    models = _list(raw.get("models"), f"{where}.models")
    if len(models) < 1:
        raise WorkloadError(f"{where}: 'models' must list the models sharing the prefix {prefix!r}")
    return PrefixGroup(prefix=prefix, models=tuple(_name(m, f"{where}.models[]") for m in models))
