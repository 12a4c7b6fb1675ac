"""Tasks served by model variants: which variant answers a task's requests, and how many are admitted.

A task (platform ``squishy_variants``) is a model name clients call whose requests any of its variant
models may answer. The control loop's chooser (``VariantChooser``) picks, at each re-plan, the variant
per task that maximises the delivered accuracy within the machine's slots (``squishy.scheduler.variants``),
and the share of each task's requests served when even the cheapest allowed variant does not fit. The
serving core routes a task's requests to the chosen variant's session and rejects the rest at once.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

from squishy.control import Choice
from squishy.profiles import Profile
from squishy.runtime.api import ModelSpec
from squishy.runtime.repository import PARAM_ACCURACY, PARAM_ACCURACY_FLOOR, parse_accuracy, variant_names
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
# A task's fallback variant (``_fallback_variant``) is planned at least at this rate (requests/s) beside its
# chosen one, so a burst, or the first seconds of a flood before the control loop has measured it, falls
# back to a resident variant instead of being dropped. At this rate it costs a sliver of one duty cycle.
FALLBACK_RESIDENT_RATE = 1.0


@dataclass
class ServedTask:
    """A task's routing state. ``route`` and ``share`` change only under the core's lock, at a plan switch."""

    spec: ModelSpec
    variants: tuple[str, ...]  # variant model names, as the config lists them
    floor: float  # no variant below this accuracy answers (shed instead)
    route: str | None = None  # the session (model:version) of the chosen variant
    accuracy: float | None = None  # the delivered accuracy of the admitted requests
    share: float = 1.0  # of the task's requests admitted; the rest are beyond capacity
    upper_route: str | None = None  # a more accurate variant's session that answers part of them
    upper_share: float = 0.0  # of the admitted requests, those sent to ``upper_route``
    fallback_route: str | None = None  # a much cheaper allowed variant's session, planned to absorb bursts
    _credit: float = field(default=0.0, repr=False)
    _upper_credit: float = field(default=0.0, repr=False)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ServedTask:
        floor = parse_accuracy(spec.parameters.get(PARAM_ACCURACY_FLOOR, "0")) or 0.0
        return cls(spec, variant_names(spec), floor)

    def admit(self) -> bool:
        """Whether to serve the next request: exactly ``share`` of them, evenly spread (a fractional
        credit, not a coin, so the served rate is what the plan packed, not that rate plus noise)."""
        if self.share >= 1.0:
            return True
        self._credit += self.share
        if self._credit >= 1.0:
            self._credit -= 1.0
            return True
        return False

    def target(self) -> str | None:
        """The session that answers the next admitted request (``upper_share`` of them the upper one)."""
        if self.upper_route is not None and self.upper_share > 0:
            self._upper_credit += self.upper_share
            if self._upper_credit >= 1.0:
                self._upper_credit -= 1.0
                return self.upper_route
        return self.route


@dataclass(frozen=True)
class VariantSession:
    """What the chooser needs of a variant model's session."""

    session_id: str
    spec: ModelSpec
    profile: Profile


def variant_accuracy(spec: ModelSpec) -> float | None:
    return parse_accuracy(spec.parameters.get(PARAM_ACCURACY, ""))


def task_problem(task: ServedTask, sessions: Mapping[str, VariantSession]) -> str | None:
    """Why ``task`` cannot be served now (None: it can). ``sessions`` maps a model name to its session."""
    allowed = 0
    for name in task.variants:
        session = sessions.get(name)
        if session is None:
            return f"variant {name!r} is not loaded (or cannot be scheduled)"
        spec = session.spec
        accuracy = variant_accuracy(spec)
        if accuracy is None:
            return f"variant {name!r} has no parameter {PARAM_ACCURACY} (its measured accuracy, within [0, 1])"
        if spec.inputs != task.spec.inputs or spec.outputs != task.spec.outputs:
            return f"variant {name!r} has other inputs or outputs than the task declares"
        if spec.max_batch_size < task.spec.max_batch_size:
            return f"variant {name!r} batches at most {spec.max_batch_size}, the task {task.spec.max_batch_size}"
        if spec.slo_ms != task.spec.slo_ms:
            return f"variant {name!r} has SLO {spec.slo_ms:g} ms, the task {task.spec.slo_ms:g} ms (set them equal)"
        allowed += accuracy >= task.floor
    if not allowed:
        return f"no variant reaches its accuracy_floor {task.floor:g}"
    return None


@dataclass
class VariantChooser:
    """The control loop's chooser over the core's tasks and plain sessions (a ``Chooser``).

    ``rates`` keys are session ids and task session ids. A plain session is a task with one variant (its
    own model at accuracy 1), so shedding under overload stays even across every model, as the packing
    alone would leave it."""

    tasks: Callable[[], Mapping[str, ServedTask]]  # task session id → task (the valid ones)
    sessions: Callable[[], Mapping[str, VariantSession]]  # model name → its session (newest version)
    profiles: Callable[[], Mapping[str, Profile]]  # session id → profile
    slo_ms: Callable[[str], float]  # session id → SLO
    settings: Settings
    load_margin: float = CHOICE_LOAD_MARGIN
    last_notes: tuple[str, ...] = ()

    def choose(self, rates: Mapping[Hashable, float], capacity: int | None) -> Choice:
        tasks = self.tasks()
        by_name = self.sessions()
        scheduler_tasks = []
        for key, measured in rates.items():
            rate = measured * self.load_margin
            sid = str(key)
            task = tasks.get(sid)
            if task is None:
                scheduler_tasks.append(Task(sid, self.slo_ms(sid), rate, (Variant(sid, PLAIN_ACCURACY),)))
                continue
            variants = []
            for name in task.variants:
                session = by_name[name]
                accuracy = variant_accuracy(session.spec)
                assert accuracy is not None  # task_problem ruled it out
                variants.append(Variant(session.session_id, accuracy))
            scheduler_tasks.append(Task(sid, task.spec.slo_ms, rate, tuple(variants), task.floor))
        profiles = self.profiles()
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
            fallback = _fallback_variant(frontier(task, profiles, self.settings), result.chosen[task.name].model)
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
            served={t.name: result.served_rate[t.name] / self.load_margin for t in chosen_tasks},
            accuracy=accuracy,
            delivered_accuracy=delivered_accuracy(chosen_tasks, result.chosen, result.served_rate, result.upper)
            if asked > 0
            else None,
        )


def _fallback_variant(ladder: list[tuple[Variant, float]], chosen: str) -> str | None:
    """The variant a burst falls back to: the most accurate one on the task's frontier that costs at most
    half of the chosen one per request (cheap enough to drain a burst), None if there is none."""
    costs = {variant.model: cost for variant, cost in ladder}
    if chosen not in costs:
        return None
    cheap = [variant for variant, cost in ladder if cost <= costs[chosen] / 2]
    return max(cheap, key=lambda v: v.accuracy).model if cheap else None
