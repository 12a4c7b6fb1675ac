"""The control loop's chooser of model variants: measured rates → which variant answers each task.

A task is a name clients call whose requests any of its variant models may answer. At each re-plan the
chooser picks, per task, the variants that maximise the delivered accuracy within the capacity
(``squishy.scheduler.variants``), the share of each task's requests served when even the cheapest allowed
variant does not fit, and a much cheaper variant to keep resident for bursts. The server and the
simulator both run it; each names its sessions its own way, so tasks and profiles come in by key.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, replace

from squishy.control.loop import Choice
from squishy.profiles import Profile
from squishy.scheduler import Settings
from squishy.scheduler.variants import (
    Task,
    Variant,
    choose_variants,
    delivered_accuracy,
    frontier,
    most_accurate_needs,
    sessions_for,
)

PLAIN_ACCURACY = 1.0  # a model without variants: its answers are the reference
# Variants are chosen for the measured rates times this. A plan packed to the last request/s of a slot
# meets Poisson bursts with early drops, and the slowdown the planner applies counts only the time inside
# the executor, not the worker's own turn around it (about a fifth more per batch of one, measured with
# benchmarks/bench_variants.py on 2 cores); this much spare time absorbs both.
CHOICE_LOAD_MARGIN = 1.35
# A task's fallback variant (``fallback_variant``) is planned at least at this rate (requests/s) beside its
# chosen one, so a burst, or the first seconds of a flood before the control loop has measured it, falls
# back to a resident variant instead of being dropped. At this rate it costs a sliver of one duty cycle.
FALLBACK_RESIDENT_RATE = 1.0


def observed_profile(profile: Profile, slowdown: float, settings: Settings) -> Profile:
    """The profile variants are chosen with: ℓ(b) scaled by the slowdown observed while serving, where it
    exceeds the margin the settings add anyway (rounded, so that noise does not make a new profile every
    tick). On a machine whose slots share cores with request handling, a slot runs batches slower than
    the profiler measured it alone; a choice made at the profiled speed sends the costly variant more than
    the slot carries. The packing itself still uses the profile."""
    factor = slowdown_factor(slowdown, settings)
    return profile if factor == 1.0 else profile.with_margin(factor)


def slowdown_factor(slowdown: float, settings: Settings) -> float:
    return round(max(1.0, slowdown / settings.profile_inflation), 2)


@dataclass
class VariantChooser:
    """The control loop's ``Chooser`` over tasks and plain sessions.

    ``tasks()`` maps a task's key to its description (its rate is ignored: the measured one is used), each
    variant named by the key of its session; ``rates`` keys are plain session keys and task keys. A plain
    session is a task with one variant (its own model at accuracy 1), so shedding under overload stays even
    across every model, as the packing alone would leave it."""

    tasks: Callable[[], Mapping[str, Task]]
    profiles: Callable[[], Mapping[str, Profile]]  # session key → the profile to plan with
    slo_ms: Callable[[str], float]  # plain session key → its SLO
    settings: Settings
    load_margin: float = CHOICE_LOAD_MARGIN
    last_notes: tuple[str, ...] = ()

    def choose(self, rates: Mapping[Hashable, float], capacity: int | None) -> Choice:
        # The margin holds for shedding too: choosing the served share for the rates as measured admitted
        # 1.6x as many requests in the floor run of benchmarks/bench_variants.py on 2 cores, and answered
        # 7.5% of them late. A device that runs its profile exactly needs no margin (load_margin 1).
        margin = self.load_margin
        tasks = self.tasks()
        profiles = self.profiles()
        scheduler_tasks = []
        for key, measured in rates.items():
            rate = measured * margin
            name = str(key)
            task = tasks.get(name)
            if task is None:
                scheduler_tasks.append(Task(name, self.slo_ms(name), rate, (Variant(name, PLAIN_ACCURACY),)))
            else:
                scheduler_tasks.append(replace(task, name=name, rate=rate))
        if capacity is None:  # as many backends as it takes: everything on its most accurate variant
            capacity = most_accurate_needs(scheduler_tasks, profiles, settings=self.settings)
        result = choose_variants(scheduler_tasks, profiles, capacity, settings=self.settings)
        self.last_notes = result.notes
        session_rates: dict[Hashable, float] = {
            s.model: s.rate
            for s in sessions_for(result.tasks, result.chosen, result.served_rate, result.upper).sessions
        }
        chosen_tasks = [t for t in result.tasks if t.name in tasks]
        fallbacks: dict[Hashable, Hashable] = {}
        for task in chosen_tasks:
            fallback = fallback_variant(frontier(task, profiles, self.settings), result.chosen[task.name].model)
            if fallback is None:
                continue
            fallbacks[task.name] = fallback
            session_rates[fallback] = max(session_rates.get(fallback, 0.0), FALLBACK_RESIDENT_RATE)
        splits: dict[Hashable, tuple[Hashable, float]] = {}
        accuracy: dict[Hashable, float] = {}
        for task in chosen_tasks:
            served = result.served_rate[task.name]
            above = result.upper.get(task.name)
            if above is not None and served > 0:
                splits[task.name] = (above[0].model, above[1] / served)
            single = delivered_accuracy([task], result.chosen, result.served_rate, result.upper)
            accuracy[task.name] = single * task.rate / served if served > 0 else 0.0
        asked = sum(t.rate for t in chosen_tasks)
        return Choice(
            session_rates=session_rates,
            routes={t.name: result.chosen[t.name].model for t in chosen_tasks},
            splits=splits,
            fallbacks=fallbacks,
            # Served rates in measured units: the margin is spare time, not requests to admit.
            served={t.name: result.served_rate[t.name] / margin for t in chosen_tasks},
            accuracy=accuracy,
            delivered_accuracy=delivered_accuracy(chosen_tasks, result.chosen, result.served_rate, result.upper)
            if asked > 0
            else None,
        )


def fallback_variant(ladder: list[tuple[Variant, float]], chosen: str) -> str | None:
    """The variant a burst falls back to: the most accurate one on the task's frontier that costs at most
    half of the chosen one per request (cheap enough to drain a burst), None if there is none."""
    costs = {variant.model: cost for variant, cost in ladder}
    if chosen not in costs:
        return None
    cheap = [variant for variant, cost in ladder if cost <= costs[chosen] / 2]
    return max(cheap, key=lambda v: v.accuracy).model if cheap else None
