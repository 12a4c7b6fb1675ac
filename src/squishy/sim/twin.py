"""The twin: the simulator set up as ``squishy serve`` on this machine, to predict what the server will do.

Inputs, all measured on this machine and none fitted to the runs the twin is judged by:
- the model repository and the profiles the server itself reads (ℓ(b) with every slot busy, cached
  beside the models by the profiler; ``squishy.runtime.core.scheduling_profile``);
- the server's own defaults for the control loop, the plan's margins and the slots
  (``ServingConfig``): the simulator runs the same control loop, placement, routing and backend turn;
- the machine's cores, and the calibration (``squishy.bench.calibrate``): CPU per request of the
  server's event loop and slot threads and of the load generator, which share the cores with the slots.

``predict`` runs one load; ``search`` finds the goodput (the highest total rate at which every model
keeps ≥ 99% of requests within its SLO, as ``squishy bench --search`` does against the real server).
``ideal=True`` leaves the host CPU out (no request handling, no generator, batches at their profiled
speed): the capacity the server loses to its own work is the gap between the two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from squishy.arrivals import Arrivals, schedule
from squishy.bench.calibrate import Calibration
from squishy.cluster import SlotLayout, slot_layout
from squishy.profiles import Profile
from squishy.runtime.core import ServingConfig, scheduling_profile, session_id
from squishy.runtime.prefix import cut_model, group_cuts, prefix_tensor
from squishy.runtime.repository import ModelRepository
from squishy.scheduler import PrefixGroup, Session, Workload
from squishy.search import RateSearch, RateSearchResult, highest_passing_rate
from squishy.sim.simulation import HostSpec, MachineSpec, RequestCosts, RequestTrace, SimConfig, Simulation

GOOD_TARGET = 0.99


@dataclass(frozen=True)
class TwinRun:
    """One load, as the twin sees it: per model, the share within SLO and latency percentiles."""

    total_rate_per_s: float
    per_model: dict[str, dict[str, Any]]
    stopped_early: bool = False

    @property
    def passed(self) -> bool:
        return not self.stopped_early and all(
            m["sent"] > 0 and m["met_fraction"] >= GOOD_TARGET for m in self.per_model.values()
        )

    @property
    def worst_met_fraction(self) -> float:
        return min(m["met_fraction"] for m in self.per_model.values())


@dataclass
class Twin:
    repository: Path
    calibration: Calibration | None  # None: the ideal machine (host work free)
    mix: Mapping[str, float]  # model → share of the total rate
    layout: SlotLayout = field(default_factory=slot_layout)
    arrivals: Arrivals = field(default_factory=Arrivals)
    warmup_s: float = 2.0
    duration_s: float = 30.0
    serving: ServingConfig = field(init=False)
    sessions: list[tuple[str, str, float, Profile]] = field(init=False)  # (model, session, SLO, profile)
    # The prefix groups the server forms among the mix's models (``squishy.runtime.prefix``), with their
    # trunks' profiles (the same cache the server reads).
    prefix_groups: tuple[PrefixGroup, ...] = field(init=False)
    trunk_profiles: dict[str, Profile] = field(init=False)

    def __post_init__(self) -> None:
        self.serving = ServingConfig(layout=self.layout)
        repository = ModelRepository(self.repository)
        repository.load_all()
        self.sessions = []
        cuts = []
        for model in self.mix:
            spec = repository.spec(model)
            self.sessions.append(
                (model, session_id(spec), spec.slo_ms, scheduling_profile(repository, spec, self.serving))
            )
            if self.serving.prefix_batching and prefix_tensor(spec) is not None:
                cuts.append(cut_model(spec))
        groups, self.trunk_profiles = [], {}
        for members in group_cuts(cuts):
            trunk = members[0].trunk_spec()
            trunk_sid = session_id(trunk)
            groups.append(PrefixGroup(prefix=trunk_sid, models=tuple(session_id(c.model) for c in members)))
            self.trunk_profiles[trunk_sid] = scheduling_profile(repository, trunk, self.serving)
        self.prefix_groups = tuple(groups)

    def host(self, total_rate_per_s: float) -> HostSpec | None:
        """The machine's cores and each model's CPU per request at this total rate (calibrated)."""
        if self.calibration is None:
            return None
        per_model = {
            session: RequestCosts(**self.calibration.models[model].at(total_rate_per_s))
            for model, session, _, _ in self.sessions
        }
        return HostSpec(cores=float(self.calibration.cores), per_model=per_model)

    def trace(self, total_rate_per_s: float, seed: int) -> RequestTrace:
        """The requests the load generator sends for this rate and seed (the very same schedule)."""
        rates = [total_rate_per_s * self.mix[model] for model, _, _, _ in self.sessions]
        offsets_s, source = schedule(rates, self.arrivals, self.warmup_s + self.duration_s, seed)
        return RequestTrace(offsets_s * 1000.0, source.astype(np.int64))

    def simulation(
        self,
        trace: RequestTrace,
        rates_per_s: Sequence[float],
        duration_s: float,
        warmup_s: float,
        seed: int = 0,
        stop_early: bool = False,
    ) -> Simulation:
        """The server on this machine replaying ``trace`` (its sources: the mix's models, in order)."""
        workload = Workload(
            sessions=tuple(Session(s, slo, r) for (_, s, slo, _), r in zip(self.sessions, rates_per_s, strict=True)),
            prefix_groups=self.prefix_groups,
            settings=self.serving.settings,
        )
        config = SimConfig(
            duration_s=duration_s,
            warmup_s=warmup_s,
            seed=seed,
            # The path's latency that is not CPU (measured by the calibration), split over its two ways.
            network_ms=self.calibration.wire_ms / 2.0 if self.calibration is not None else 0.0,
            model_load_ms=0.0,
            control=self.serving.control(),
            machine=MachineSpec(self.layout.slots, self.serving.work_stealing),
            trace=trace,
            host=self.host(sum(rates_per_s)),
            stop_bad_share=3.0 * (1.0 - GOOD_TARGET) if stop_early else None,
        )
        profiles = {session: profile for _, session, _, profile in self.sessions} | self.trunk_profiles
        return Simulation(workload, profiles, None, "squishy", config)

    def predict(self, total_rate_per_s: float, seed: int = 0, stop_early: bool = False) -> TwinRun:
        rates = [total_rate_per_s * self.mix[model] for model, _, _, _ in self.sessions]
        trace = self.trace(total_rate_per_s, seed)
        simulation = self.simulation(trace, rates, self.warmup_s + self.duration_s, self.warmup_s, seed, stop_early)
        result = simulation.run()
        per_model = {}
        for (model, _, slo, _), (_, stats) in zip(self.sessions, result.summary["sessions"].items(), strict=True):
            sent = stats["sent"]
            per_model[model] = {
                "slo_ms": slo,
                "sent": sent,
                "met_fraction": stats["good"] / sent if sent else math.nan,
                "p50_ms": stats["p50_ms"],
                "p99_ms": stats["p99_ms"],
                "dropped": stats["dropped"],
                "late": stats["late"],
            }
        return TwinRun(total_rate_per_s, per_model, bool(result.summary["stopped_early"]))

    def search(self, start_per_s: float, tolerance: float = 0.02, seed: int = 0) -> RateSearchResult[TwinRun]:
        """The goodput: the highest total rate at which every model keeps ≥ 99% within its SLO."""
        return highest_passing_rate(
            lambda rate, trial_seed: self.predict(rate, trial_seed, stop_early=True),
            RateSearch(start=start_per_s, tolerance=tolerance, seed=seed, confirm_seed=seed + 1),
        )


def physical_limit(twin: Twin) -> float:
    """Slots × best b/ℓ(b) with 2ℓ(b) ≤ SLO, per model, combined over the mix by its shares: the rate at
    which the slots alone, doing nothing but the mix's work at its best batches, are full."""
    seconds_per_request = 0.0
    for model, _, slo, profile in twin.sessions:
        best = max(
            (b / profile.latency_ms(b) for b in profile.allowed_batches if 2 * profile.latency_ms(b) <= slo),
            default=1 / profile.latency_ms(profile.min_batch),
        )
        seconds_per_request += twin.mix[model] / (best * 1000.0)
    return twin.layout.slots / seconds_per_request if seconds_per_request else math.inf


def mix_of(models: Sequence[str], weights: Sequence[float] | None = None) -> dict[str, float]:
    """Shares of the total rate: ``weights`` normalized, or Zipf over the order given (1, ½, ⅓, ...)."""
    raw = list(weights) if weights is not None else [1.0 / k for k in range(1, len(models) + 1)]
    total = sum(raw)
    return {model: w / total for model, w in zip(models, raw, strict=True)}
