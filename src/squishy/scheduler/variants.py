"""Model variants under a budget of backends: degrade before you drop (MCDNN's approximate scheduling).

A *task* ("classify this digit") can be served by several *variants* that trade accuracy for cost (a
narrower net, an int8 build, another runtime). Given each task's rate and SLO and a budget of backends,
``choose_variants`` picks one variant per task and packs the chosen sessions with squishy bin packing,
maximising the delivered accuracy: the rate-weighted share of requests answered correctly, where a shed
request counts as not answered.

The policy, a planner policy beside the packing (it calls ``make_plan``, it does not fork it):

1. Keep each task's variants that meet its SLO at all and its accuracy floor, and of those only the ones
   on the (cost, accuracy) Pareto frontier. A variant's cost is the backend time one request takes when
   the session fills a backend (1 / throughput at its saturating batch): what a request costs at scale.
2. Start every task on its most accurate variant. While the plan needs more backends than the budget,
   degrade the task whose next cheaper variant loses the least accuracy per unit of backend time saved
   (the multiple-choice knapsack's greedy order; the rate cancels, so it is judged per request).
3. If every task is on its cheapest allowed variant and the plan still does not fit, shed: serve the same
   share of every task's rate, the largest share that fits (requests beyond it are rejected at once by
   the server, never queued). A task at its accuracy floor is shed, never degraded below it.
4. Then improve by local search: upgrade one task, degrade the others by the same rule until the plan
   fits again, and keep the best such move while one raises the delivered accuracy.
5. Whole rungs leave room: the last degradation usually freed more than the plan needed. Spend it by
   splitting: send the largest share of a degraded task's rate that still fits to a more accurate
   variant (the fractional knapsack's one split item), the steepest gain per backend time first. One
   task at twice its accurate variant's capacity is then served half and half, not all degraded.

Everything here is pure: workload and profiles in, a ``VariantPlan`` out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from squishy.errors import InfeasibleError, WorkloadError
from squishy.profiles import Profile
from squishy.scheduler.demand import EPS_MS, margin_ms, saturating_batch, scheduled_profile
from squishy.scheduler.plan import Plan
from squishy.scheduler.planner import make_plan
from squishy.scheduler.workload import Device, Session, Settings, Workload

# The local search stops after this many packings (``make_plan`` calls), divided by the number of tasks
# since a packing's cost grows with them (about 1 ms for six sessions, 10 ms for fifty): its moves cost
# O((tasks × variants)²) packings, so a large instance keeps the greedy's choice plus the moves that fit
# in this budget. Each move strictly raises the accuracy.
LOCAL_SEARCH_PACKINGS = 2000
LOCAL_SEARCH_PACKING_TASKS = 12_000
SHED_SEARCH_STEPS = 30  # bisection steps on the share of the rate served
SPLIT_SEARCH_STEPS = 12  # bisection steps on the share of a task's rate sent to a more accurate variant


@dataclass(frozen=True)
class Variant:
    """One way to serve a task: the model that runs, and its accuracy measured on a held-out set (0–1)."""

    model: str
    accuracy: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.accuracy <= 1.0:
            raise WorkloadError(f"variant {self.model!r}: accuracy must be within [0, 1], got {self.accuracy!r}")


@dataclass(frozen=True)
class Task:
    """Requests for one task at one SLO; any of ``variants`` may answer them, none below ``accuracy_floor``."""

    name: str
    slo_ms: float
    rate: float
    variants: tuple[Variant, ...]
    accuracy_floor: float = 0.0

    def __post_init__(self) -> None:
        if not self.variants:
            raise WorkloadError(f"task {self.name!r} lists no variants")
        models = [v.model for v in self.variants]
        if len(set(models)) != len(models):
            raise WorkloadError(f"task {self.name!r} lists a variant twice")


@dataclass(frozen=True)
class VariantPlan:
    """The chosen variant and served rate of every task, and the plan that packs them."""

    tasks: tuple[Task, ...]
    chosen: Mapping[str, Variant]  # task → the variant serving it
    served_rate: Mapping[str, float]  # task → requests/s served (the rest is shed)
    plan: Plan
    budget_backends: int
    degraded: tuple[str, ...] = ()  # tasks not on their most accurate allowed variant
    notes: tuple[str, ...] = field(default=())
    # task → a more accurate variant and the requests/s of the served rate it answers (split tasks only)
    upper: Mapping[str, tuple[Variant, float]] = field(default_factory=dict)

    @property
    def total_rate(self) -> float:
        return sum(t.rate for t in self.tasks)

    @property
    def shed_rate(self) -> float:
        return sum(t.rate - self.served_rate[t.name] for t in self.tasks)

    @property
    def delivered_accuracy(self) -> float:
        """Requests answered correctly over requests sent (shed ones count as not answered)."""
        return delivered_accuracy(self.tasks, self.chosen, self.served_rate, self.upper)

    @property
    def served_accuracy(self) -> float:
        """Accuracy over the requests answered."""
        served = sum(self.served_rate.values())
        if served <= 0:
            return 0.0
        return _correct(self.tasks, self.chosen, self.served_rate, self.upper) / served


def delivered_accuracy(
    tasks: Sequence[Task],
    chosen: Mapping[str, Variant],
    served_rate: Mapping[str, float] | None = None,
    upper: Mapping[str, tuple[Variant, float]] | None = None,
) -> float:
    total = sum(t.rate for t in tasks)
    if total <= 0:
        return 0.0
    served = served_rate or {t.name: t.rate for t in tasks}
    return _correct(tasks, chosen, served, upper or {}) / total


def _correct(
    tasks: Sequence[Task],
    chosen: Mapping[str, Variant],
    served: Mapping[str, float],
    upper: Mapping[str, tuple[Variant, float]],
) -> float:
    """Requests/s answered correctly."""
    total = 0.0
    for task in tasks:
        rate = served[task.name]
        above = upper.get(task.name)
        if above is not None:
            total += above[1] * above[0].accuracy
            rate -= above[1]
        total += rate * chosen[task.name].accuracy
    return total


# ------------------------------------------------------------------------------------------- costs
def request_cost_ms(task: Task, variant: Variant, profiles: Mapping[str, Profile], settings: Settings) -> float | None:
    """Backend time per request of ``variant`` at ``task``'s SLO when its session fills a backend, or None
    if the variant cannot meet the SLO at all (margins applied as the packing applies them)."""
    profile = profiles.get(variant.model)
    if profile is None:
        raise WorkloadError(f"task {task.name!r}: no profile for variant {variant.model!r}")
    budget_ms = task.slo_ms - margin_ms(profile, settings)
    if budget_ms <= EPS_MS:
        return None
    scheduled = scheduled_profile(profile, settings)
    batch = saturating_batch(scheduled, budget_ms, None)
    if batch is None:
        return None
    return scheduled.latency_ms(batch) / batch


def frontier(task: Task, profiles: Mapping[str, Profile], settings: Settings) -> list[tuple[Variant, float]]:
    """The task's usable variants on the (cost, accuracy) Pareto frontier, cheapest first, with their cost."""
    usable = []
    for variant in task.variants:
        if variant.accuracy < task.accuracy_floor:
            continue
        cost = request_cost_ms(task, variant, profiles, settings)
        if cost is not None:
            usable.append((variant, cost))
    usable.sort(key=lambda vc: (vc[1], -vc[0].accuracy))
    kept: list[tuple[Variant, float]] = []
    for variant, cost in usable:
        if not kept or variant.accuracy > kept[-1][0].accuracy:
            kept.append((variant, cost))
    return kept


# ------------------------------------------------------------------------------------------- packing
def sessions_for(
    tasks: Sequence[Task],
    chosen: Mapping[str, Variant],
    served_rate: Mapping[str, float],
    upper: Mapping[str, tuple[Variant, float]] | None = None,
) -> Workload:
    """The sessions a choice asks the packing for; tasks that chose the same model at one SLO share one."""
    rates: dict[tuple[str, float], float] = {}

    def add(model: str, slo_ms: float, rate: float) -> None:
        if rate > 0:
            rates[(model, slo_ms)] = rates.get((model, slo_ms), 0.0) + rate

    for task in tasks:
        rate = served_rate[task.name]
        above = (upper or {}).get(task.name)
        if above is not None:
            add(above[0].model, task.slo_ms, above[1])
            rate -= above[1]
        add(chosen[task.name].model, task.slo_ms, rate)
    return Workload(sessions=tuple(Session(model, slo, rate) for (model, slo), rate in rates.items()))


@dataclass
class ChoicePacker:
    """Plans choices with squishy bin packing, remembering each choice's plan (the search revisits them)."""

    tasks: Sequence[Task]
    profiles: Mapping[str, Profile]
    settings: Settings
    memory_mb: float | None
    budget: int
    packings: int = 0  # make_plan calls so far
    search_limit: int = 0  # the local search stops when ``packings`` reaches it
    _plans: dict[tuple[object, ...], Plan] = field(default_factory=dict)

    def plan(
        self,
        chosen: Mapping[str, Variant],
        served: Mapping[str, float],
        upper: Mapping[str, tuple[Variant, float]] | None = None,
    ) -> Plan:
        key: tuple[object, ...] = tuple((t.name, chosen[t.name].model, round(served[t.name], 9)) for t in self.tasks)
        if upper:
            key += tuple(sorted((name, v.model, round(rate, 9)) for name, (v, rate) in upper.items()))
        plan = self._plans.get(key)
        if plan is None:
            sessions = sessions_for(self.tasks, chosen, served, upper).sessions
            workload = Workload(sessions=sessions, settings=self.settings, device=Device(memory_mb=self.memory_mb))
            plan = self._plans[key] = make_plan(workload, self.profiles)
            self.packings += 1
        return plan

    def fits(
        self,
        chosen: Mapping[str, Variant],
        served: Mapping[str, float],
        upper: Mapping[str, tuple[Variant, float]] | None = None,
    ) -> bool:
        return len(self.plan(chosen, served, upper).backends) <= self.budget


# ------------------------------------------------------------------------------------------- the policy
Ladders = Mapping[str, list[tuple[Variant, float]]]  # task → its frontier, cheapest first, with costs


def choose_variants(
    tasks: Sequence[Task],
    profiles: Mapping[str, Profile],
    budget_backends: int,
    *,
    settings: Settings | None = None,
    memory_mb: float | None = None,
    split: bool = True,
) -> VariantPlan:
    """Pick a variant and a served rate per task so the plan fits ``budget_backends``, maximising the
    delivered accuracy (see the module's docstring for the policy; ``split`` False stops after step 4,
    one variant per task)."""
    settings = settings or Settings()
    if budget_backends < 0:
        raise WorkloadError("the budget of backends must be >= 0")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise WorkloadError("task names must be unique")
    ladders = {t.name: frontier(t, profiles, settings) for t in tasks}
    for task in tasks:
        if not ladders[task.name]:
            floor = f" at or above its accuracy floor {task.accuracy_floor:g}" if task.accuracy_floor else ""
            raise InfeasibleError(f"task {task.name!r}: no variant{floor} can meet its {task.slo_ms:g} ms SLO")
    packer = ChoicePacker(tasks, profiles, settings, memory_mb, budget_backends)
    served = {t.name: t.rate for t in tasks}
    top = {t.name: ladders[t.name][-1][0] for t in tasks}
    chosen = _descend(packer, tasks, ladders, top, served, frozen=())
    notes: list[str] = []
    if chosen is None:
        chosen = {t.name: ladders[t.name][0][0] for t in tasks}
        share = _largest_share(packer, tasks, chosen)
        served = {t.name: t.rate * share for t in tasks}
        notes.append(f"demand exceeds the budget on the cheapest allowed variants: {share:.1%} of each rate served")
    chosen = _improve(packer, tasks, ladders, chosen, served)
    upper = _split(packer, tasks, ladders, chosen, served) if split and not notes else {}
    degraded = tuple(t.name for t in tasks if chosen[t.name] != top[t.name])
    return VariantPlan(
        tasks=tuple(tasks),
        chosen=chosen,
        served_rate=served,
        plan=packer.plan(chosen, served, upper),
        budget_backends=budget_backends,
        degraded=degraded,
        notes=tuple(notes),
        upper=upper,
    )


def _cost(ladder: list[tuple[Variant, float]], variant: Variant) -> float:
    return next(cost for v, cost in ladder if v == variant)


def _degrade_step(
    tasks: Sequence[Task], ladders: Ladders, chosen: Mapping[str, Variant], frozen: Sequence[str]
) -> tuple[str, Variant] | None:
    """The change to a cheaper variant that loses the least accuracy per backend time saved per request.
    Any cheaper rung may be the target, not only the next one: on a ladder that is not convex, jumping
    two rungs can lose less per time saved than one (the knapsack's convex-hull step)."""
    best: tuple[float, float, str, int] | None = None
    for task in tasks:
        if task.name in frozen or task.rate <= 0:
            continue
        ladder = ladders[task.name]
        here = chosen[task.name]
        here_cost = _cost(ladder, here)
        for index, (below, below_cost) in enumerate(ladder):
            if below_cost >= here_cost:
                break
            loss_per_saving = (here.accuracy - below.accuracy) / (here_cost - below_cost)
            candidate = (loss_per_saving, -task.rate, task.name, index)  # ties: the busier task saves more
            if best is None or candidate < best:
                best = candidate
    if best is None:
        return None
    return best[2], ladders[best[2]][best[3]][0]


def _descend(
    packer: ChoicePacker,
    tasks: Sequence[Task],
    ladders: Ladders,
    chosen: Mapping[str, Variant],
    served: Mapping[str, float],
    frozen: Sequence[str],
) -> dict[str, Variant] | None:
    """Degrade step by step (never the ``frozen`` tasks) until the plan fits; None if it never does."""
    current = dict(chosen)
    while not packer.fits(current, served):
        step = _degrade_step(tasks, ladders, current, frozen)
        if step is None:
            return None
        current[step[0]] = step[1]
    return current


def _largest_share(packer: ChoicePacker, tasks: Sequence[Task], chosen: Mapping[str, Variant]) -> float:
    """The largest share of every task's rate that the budget carries on ``chosen`` (bisection)."""
    low, high = 0.0, 1.0
    for _ in range(SHED_SEARCH_STEPS):
        middle = (low + high) / 2.0
        if packer.fits(chosen, {t.name: t.rate * middle for t in tasks}):
            low = middle
        else:
            high = middle
    return low


def _improve(
    packer: ChoicePacker,
    tasks: Sequence[Task],
    ladders: Ladders,
    chosen: dict[str, Variant],
    served: Mapping[str, float],
) -> dict[str, Variant]:
    """Local search. A move upgrades one task to a more accurate rung, then degrades the others by the
    greedy rule until the plan fits again; the best move that raises the delivered accuracy is taken,
    until none does. The greedy steps in whole rungs, so its last step may free more than was needed:
    this spends that, and trades accuracy between tasks where packing makes one task's rung cheap."""
    allowed = min(LOCAL_SEARCH_PACKINGS, LOCAL_SEARCH_PACKING_TASKS // max(len(tasks), 1))
    limit = packer.search_limit = packer.packings + allowed

    def value(choice: Mapping[str, Variant]) -> float:
        return sum(served[name] * variant.accuracy for name, variant in choice.items())

    while packer.packings < limit:
        best, best_value = None, value(chosen) + 1e-12
        for task in tasks:
            for variant, _ in ladders[task.name]:
                if variant == chosen[task.name] or packer.packings >= limit:
                    continue
                start = {**chosen, task.name: variant}
                if variant.accuracy > chosen[task.name].accuracy:  # up, then make room
                    trial = _descend(packer, tasks, ladders, start, served, frozen=(task.name,))
                else:  # down, then spend the room
                    trial = _ascend(packer, tasks, ladders, start, served, frozen=(task.name,))
                if trial is not None and value(trial) > best_value:
                    best, best_value = trial, value(trial)
        if best is None:
            return chosen
        chosen = best
    return chosen


def _split(
    packer: ChoicePacker,
    tasks: Sequence[Task],
    ladders: Ladders,
    chosen: Mapping[str, Variant],
    served: Mapping[str, float],
) -> dict[str, tuple[Variant, float]]:
    """Per degraded task, the steepest step up its ladder, and the largest share of its rate that the
    budget carries there (bisection), taken in order of accuracy gained per backend time."""
    steps = []
    for task in tasks:
        if served[task.name] <= 0:
            continue
        ladder = ladders[task.name]
        here = chosen[task.name]
        here_cost = _cost(ladder, here)
        ups = [
            ((above.accuracy - here.accuracy) / max(cost - here_cost, 1e-12), above)
            for above, cost in ladder
            if above.accuracy > here.accuracy
        ]
        if ups:
            gain, above = max(ups, key=lambda gv: gv[0])
            steps.append((-gain, task.name, above))
    upper: dict[str, tuple[Variant, float]] = {}
    for _, name, above in sorted(steps, key=lambda step: (step[0], step[1])):
        low, high = 0.0, 1.0
        for _ in range(SPLIT_SEARCH_STEPS):
            middle = (low + high) / 2.0
            if packer.fits(chosen, served, {**upper, name: (above, served[name] * middle)}):
                low = middle
            else:
                high = middle
        if low > 0:
            upper[name] = (above, served[name] * low)
    return upper


def _ascend(
    packer: ChoicePacker,
    tasks: Sequence[Task],
    ladders: Ladders,
    chosen: Mapping[str, Variant],
    served: Mapping[str, float],
    frozen: Sequence[str],
) -> dict[str, Variant] | None:
    """Upgrade step by step (never the ``frozen`` tasks), the most accuracy per extra backend time first,
    while the plan still fits; None if ``chosen`` itself does not fit."""
    current = dict(chosen)
    if not packer.fits(current, served):
        return None
    while True:
        steps = []
        for task in tasks:
            if task.name in frozen or task.rate <= 0:
                continue
            ladder = ladders[task.name]
            here = current[task.name]
            here_cost = _cost(ladder, here)
            for above, above_cost in ladder:
                if above.accuracy > here.accuracy:
                    gain = (above.accuracy - here.accuracy) / max(above_cost - here_cost, 1e-12)
                    steps.append((-gain, -task.rate, task.name, above.model, above))
        for *_, name, _model, above in sorted(steps):
            if packer.packings >= packer.search_limit:
                return current
            trial = {**current, name: above}
            if packer.fits(trial, served):
                current = trial
                break
        else:
            return current


def best_fixed_variant(
    tasks: Sequence[Task],
    profiles: Mapping[str, Profile],
    budget_backends: int,
    *,
    settings: Settings | None = None,
    memory_mb: float | None = None,
) -> VariantPlan | None:
    """INFaaS's baseline: every task on the same rung of its ladder (all most accurate, all second, ...),
    the most accurate rung that fits the budget without shedding; None if even the cheapest does not."""
    settings = settings or Settings()
    ladders = {t.name: frontier(t, profiles, settings) for t in tasks}
    packer = ChoicePacker(tasks, profiles, settings, memory_mb, budget_backends)
    served = {t.name: t.rate for t in tasks}
    depth = max(len(ladder) for ladder in ladders.values())
    for rung in range(depth):  # 0: the most accurate of each task
        chosen = {name: ladder[max(len(ladder) - 1 - rung, 0)][0] for name, ladder in ladders.items()}
        if packer.fits(chosen, served):
            return VariantPlan(tuple(tasks), chosen, served, packer.plan(chosen, served), budget_backends)
    return None


def most_accurate_needs(
    tasks: Sequence[Task], profiles: Mapping[str, Profile], *, settings: Settings | None = None
) -> int:
    """Backends the plan needs with every task on its most accurate variant (the reference capacity)."""
    return _needs(tasks, profiles, settings or Settings(), -1)


def cheapest_needs(tasks: Sequence[Task], profiles: Mapping[str, Profile], *, settings: Settings | None = None) -> int:
    """Backends the plan needs with every task on its cheapest allowed variant."""
    return _needs(tasks, profiles, settings or Settings(), 0)


def _needs(tasks: Sequence[Task], profiles: Mapping[str, Profile], settings: Settings, rung: int) -> int:
    chosen = {t.name: frontier(t, profiles, settings)[rung][0] for t in tasks}
    sessions = sessions_for(tasks, chosen, {t.name: t.rate for t in tasks}).sessions
    return len(make_plan(Workload(sessions=sessions, settings=settings), profiles).backends)
