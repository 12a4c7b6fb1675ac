"""The control loop: measured rates → re-plan decisions → a plan that fits the capacity.

The server and the simulator both drive it, under their own clocks: they ``record`` arrivals as they
come (or in bulk), call ``decide(now_s)`` every tick, and when a re-plan is due, ``plan(request)``
(the fitting search; the server runs it off its event loop) and ``installed(...)`` once the plan runs.

Sizing: the plan is made for the largest multiple of the measured rates, up to ``max_headroom``, that
fits ``capacity`` backends (``squishy.control.fitting``): spare slots absorb bursts. When even the
measured load does not fit, the plan is for the share that does, and early drop sheds the rest.

Stability: a re-plan is due every epoch, or early when a session's rate leaves [low, high] × its
planned rate (at most once per ``min_interval_s``). The rate estimator jumps on a level shift, so a
step in load is re-planned for once, not once per 10% of an EWMA's lag. An epoch re-plan (every rate
still within its band) is installed only when it frees a backend: moves at constant load buy nothing.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from squishy.control.epochs import EpochPolicy, ReplanReason
from squishy.control.fitting import DoesNotFit, largest_fitting
from squishy.control.rates import RateEstimator
from squishy.scheduler import Plan


@dataclass(frozen=True)
class ControlConfig:
    tick_s: float = 1.0  # how often the loop looks at the rates
    epoch_s: float = 30.0  # re-plan at least this often (Nexus: 30 s on a cluster)
    min_interval_s: float = 10.0  # early re-plans at most this often
    band: tuple[float, float] = (0.8, 1.1)  # re-plan early when measured / planned leaves this band
    ewma_s: float = 10.0  # time constant of the rate estimate
    window_s: float = 1.0  # rates are counted over windows this long
    shift_windows: int = 2  # consecutive windows outside the band that make a level shift (0: never)
    max_headroom: float = 1.0  # plan for up to this multiple of the measured load when it fits
    min_rate_per_s: float = 0.0  # every session is planned for at least this rate
    fit_tolerance: float = 0.02  # precision of the fitting search (relative)

    @classmethod
    def from_dict(cls, data: Mapping[str, object] | None) -> ControlConfig:
        data = dict(data or {})
        band = data.pop("band", (0.8, 1.1))
        shift = int(data.pop("shift_windows", 2))  # type: ignore[call-overload]
        return cls(
            band=(float(band[0]), float(band[1])),  # type: ignore[index]
            shift_windows=shift,
            **{k: float(v) for k, v in data.items()},  # type: ignore[arg-type]
        )


class Planner(Protocol):
    """Makes plans for given rates: from scratch, or by moving as little as possible from ``previous``."""

    def fresh(self, rates: Mapping[Hashable, float]) -> Plan: ...

    def incremental(self, previous: Plan, rates: Mapping[Hashable, float]) -> Plan: ...


@dataclass(frozen=True)
class Choice:
    """Which session answers each task (a model with variants), and the rates the plan must pack."""

    session_rates: dict[Hashable, float]  # every session to pack, at the rate routed to it
    routes: dict[Hashable, Hashable]  # task → the session of the variant chosen for it
    # task → a more accurate variant's session and the share of the task's served requests it answers
    splits: dict[Hashable, tuple[Hashable, float]] = field(default_factory=dict)
    # task → the session of a much cheaper allowed variant, kept resident so bursts can fall back to it
    fallbacks: dict[Hashable, Hashable] = field(default_factory=dict)
    served: dict[Hashable, float] = field(default_factory=dict)  # task → the rate served (the rest is shed)
    accuracy: dict[Hashable, float] = field(default_factory=dict)  # task → the chosen variant's accuracy
    delivered_accuracy: float | None = None  # over the tasks' requests, shed ones counted as not answered


class Chooser(Protocol):
    """Turns measured rates (of sessions and of tasks) into a choice of variants that fits ``capacity``."""

    def choose(self, rates: Mapping[Hashable, float], capacity: int | None) -> Choice: ...


@dataclass(frozen=True)
class PlanRequest:
    reason: ReplanReason | str
    time_s: float
    rates: dict[Hashable, float]  # measured (floored at the minimum rate) when the re-plan was decided


@dataclass(frozen=True)
class PlanDecision:
    request: PlanRequest
    plan: Plan
    headroom: float  # the plan is for this multiple of the measured rates (< 1: capacity binds)
    fits: bool  # False: not even a sliver fits; the plan has more backends than the capacity
    choice: Choice | None = None  # the variants chosen (None: no task has variants)
    # Backends the plan would use for the measured rates at the target headroom if the capacity did not
    # bind: what an autoscaler should provide (``squishy_plan_backends_required``).
    required_backends: int = 0

    def __post_init__(self) -> None:
        if self.required_backends < self.plan.num_backends:
            object.__setattr__(self, "required_backends", self.plan.num_backends)


@dataclass
class ControlLoop:
    config: ControlConfig
    planner: Planner
    capacity: int | None = None  # backends the plan may use (None: as many as it needs)
    # Chooses variants for the measured load before sizing (None: every session is one model). The choice
    # is made for the measured rates, not for the headroom: spare slots are not bought with accuracy.
    chooser: Chooser | None = None
    plan: Plan | None = None
    choice: Choice | None = None  # the variants the running plan serves
    headroom: float = 1.0
    planned: dict[Hashable, float] = field(default_factory=dict)  # the rates the running plan was made for
    estimator: RateEstimator = field(init=False)
    policy: EpochPolicy = field(init=False)
    installs: int = 0
    skipped: int = 0  # epoch re-plans that would have changed nothing

    def __post_init__(self) -> None:
        config = self.config
        self.estimator = RateEstimator(config.window_s, config.ewma_s, config.shift_windows, config.band)
        self.policy = EpochPolicy(
            epoch_s=config.epoch_s,
            min_interval_s=config.min_interval_s,
            low_factor=config.band[0],
            high_factor=config.band[1],
        )

    # ----------------------------------------------------------------------------------- inputs
    def record(self, key: Hashable, now_s: float, count: int = 1) -> None:
        self.estimator.record(key, now_s, count)

    def record_times(self, key: Hashable, times_s: np.ndarray) -> None:
        self.estimator.record_times(key, times_s)

    def measured(self, now_s: float) -> dict[Hashable, float]:
        return self.estimator.rates(now_s)

    # -------------------------------------------------------------------------------- decisions
    def request(self, now_s: float, keys: Iterable[Hashable], reason: ReplanReason | str) -> PlanRequest:
        """A re-plan for ``keys`` at the current estimates, whatever the triggers say (start, load, unload)."""
        measured = self.estimator.rates(now_s)
        floor = self.config.min_rate_per_s
        return PlanRequest(reason, now_s, {key: max(measured.get(key, 0.0), floor) for key in keys})

    def decide(self, now_s: float, keys: Iterable[Hashable]) -> PlanRequest | None:
        """Whether a re-plan is due now, and for which rates."""
        request = self.request(now_s, keys, ReplanReason.EPOCH)
        reason = self.policy.due(now_s, request.rates, self.planned)
        if reason is None:
            return None
        return PlanRequest(reason, now_s, request.rates)

    def plan_for(self, request: PlanRequest) -> PlanDecision:
        """The plan for the largest multiple of the request's rates (≤ max_headroom) that fits; with a
        chooser, of the rates its choice of variants routes to each session."""
        choice = self.chooser.choose(request.rates, self.capacity) if self.chooser is not None else None
        rates = choice.session_rates if choice is not None else request.rates
        target = self.config.max_headroom

        def scaled(scale: float) -> dict[Hashable, float]:
            return {key: rate * scale for key, rate in rates.items()}

        def decided(plan: Plan, scale: float, fits: bool = True) -> PlanDecision:
            # Below the target the capacity bound: the plan it would have made without the bound says
            # how many backends the load needs.
            required = self.planner.fresh(scaled(target)).num_backends if scale < target else 0
            return PlanDecision(request, plan, scale, fits, choice, required)

        if self.plan is not None:
            moved = self.planner.incremental(self.plan, scaled(target))
            if self.capacity is None or moved.num_backends <= self.capacity:
                return decided(moved, target)
        if self.capacity is None:
            return decided(self.planner.fresh(scaled(target)), target)
        try:
            scale, fresh = largest_fitting(
                lambda s: self.planner.fresh(scaled(s)),
                self.capacity,
                start=target,
                upper=target,
                relative_tolerance=self.config.fit_tolerance,
            )
        except DoesNotFit as exc:
            return decided(exc.plan, exc.scale, False)
        if self.plan is not None and scale < target:
            moved = self.planner.incremental(self.plan, scaled(scale))
            if moved.num_backends <= self.capacity:
                return decided(moved, scale)
        return decided(fresh, scale)

    def worth_installing(self, decision: PlanDecision) -> bool:
        """Whether to install a plan. A re-plan a trigger asked for (load left its band, a session came or
        went) is installed; an epoch re-plan, made while every rate is within its band, only when it frees
        a backend (consolidation): moving sessions around at constant load costs model loads and buys
        nothing."""
        if self.plan is None or decision.request.reason != ReplanReason.EPOCH:
            return True
        if _choice_moved(self.choice, decision.choice):
            return True
        return decision.plan.num_backends < self.plan.num_backends

    def installed(self, decision: PlanDecision) -> None:
        self.plan = decision.plan
        self.choice = decision.choice
        self.planned = dict(decision.request.rates)
        self.headroom = decision.headroom
        self.policy.replanned(decision.request.time_s)
        self.installs += 1

    def skip(self, decision: PlanDecision) -> None:
        """Keep the running plan (an epoch re-plan that changed nothing); the epoch starts over. The planned
        rates stay those the running plan was made for, so drift still triggers a re-plan."""
        self.policy.replanned(decision.request.time_s)
        self.skipped += 1

    def forget(self) -> None:
        """No plan runs (every session unloaded)."""
        self.plan = None
        self.choice = None
        self.planned = {}


# An epoch re-plan whose choice of variants moves more than this share of a task's requests is installed
# even at constant load: the costs it was chosen for changed (the slots' observed slowdown), and a choice
# made for costs that no longer hold overcommits a slot, or spends accuracy it need not.
CHOICE_MOVE_SHARE = 0.03


def _choice_moved(running: Choice | None, new: Choice | None) -> bool:
    if running is None or new is None:
        return running is not new
    if running.routes != new.routes:
        return True
    for task in set(running.splits) | set(new.splits):
        old_target, old_share = running.splits.get(task, (None, 0.0))
        new_target, new_share = new.splits.get(task, (None, 0.0))
        if old_target != new_target and old_share > 0 and new_share > 0:
            return True
        if abs(old_share - new_share) > CHOICE_MOVE_SHARE:
            return True
    return False
