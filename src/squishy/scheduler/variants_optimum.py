"""Yardsticks for the variant policy on small instances: the exact best choice, and an upper bound.

``best_choice`` is exact for the question the policy answers (which variant per task, every task served
in full) with the packing held fixed: it tries every combination of every usable variant (dominated ones
too, since batch granularity can make a dominated variant pack better), best delivered accuracy first,
and returns the first that squishy bin packing fits in the budget. Exponential: keep it to about six
tasks of four variants.

``occupancy_bound`` is the multiple-choice knapsack the packing relaxes to, solved exactly as an ILP with
``scipy.optimize.milp`` (scipy is a dev extra): a request of variant v costs the backend time it takes
on a saturated backend, and the budget is the backends' total time. Every plan spends at least that, so
no choice that fits can deliver more accuracy than this bound.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from squishy.profiles import Profile
from squishy.scheduler.variants import ChoicePacker, Task, Variant, delivered_accuracy, request_cost_ms
from squishy.scheduler.workload import Settings


def _usable(task: Task, profiles: Mapping[str, Profile], settings: Settings) -> list[tuple[Variant, float]]:
    out = []
    for variant in task.variants:
        if variant.accuracy < task.accuracy_floor:
            continue
        cost = request_cost_ms(task, variant, profiles, settings)
        if cost is not None:
            out.append((variant, cost))
    return out


def best_choice(
    tasks: Sequence[Task],
    profiles: Mapping[str, Profile],
    budget_backends: int,
    *,
    settings: Settings | None = None,
    memory_mb: float | None = None,
) -> tuple[float, dict[str, Variant]] | None:
    """The highest delivered accuracy of any choice that fits with every task served in full, and that
    choice; None if none fits."""
    settings = settings or Settings()
    options = [[v for v, _ in _usable(t, profiles, settings)] for t in tasks]
    if any(not o for o in options):
        return None
    if np.prod([len(o) for o in options], dtype=float) > 50_000:
        raise ValueError("the exact choice is exponential; use it on about six tasks of four variants")
    packer = ChoicePacker(tasks, profiles, settings, memory_mb, budget_backends)
    served = {t.name: t.rate for t in tasks}
    combos = []
    for combo in itertools.product(*options):
        chosen = {t.name: v for t, v in zip(tasks, combo, strict=True)}
        combos.append((delivered_accuracy(tasks, chosen), chosen))
    combos.sort(key=lambda c: -c[0])
    for accuracy, chosen in combos:
        if packer.fits(chosen, served):
            return accuracy, chosen
    return None


def occupancy_bound(
    tasks: Sequence[Task],
    profiles: Mapping[str, Profile],
    budget_backends: int,
    *,
    settings: Settings | None = None,
    split: bool = False,
) -> float | None:
    """An upper bound on the delivered accuracy of any choice that serves every task in full: an ILP over
    whole variants, or with ``split`` its LP relaxation, which bounds choices that split a task's rate
    between variants too (a request costs at least its variant's cost at the saturating batch)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    settings = settings or Settings()
    usable = [_usable(t, profiles, settings) for t in tasks]
    if any(not u for u in usable):
        return None
    total = sum(t.rate for t in tasks)
    objective, cost, rows = [], [], []
    for index, (task, options) in enumerate(zip(tasks, usable, strict=True)):
        for variant, cost_ms in options:
            objective.append(-task.rate * variant.accuracy / total)
            cost.append(task.rate * cost_ms / 1000.0)  # backend-seconds per second
            rows.append(index)
    count = len(objective)
    one_each = np.zeros((len(tasks), count))
    for column, row in enumerate(rows):
        one_each[row, column] = 1.0
    constraints = [
        LinearConstraint(one_each, 1.0, 1.0),
        LinearConstraint(np.array([cost]), -np.inf, float(budget_backends)),
    ]
    result = milp(
        np.array(objective),
        constraints=constraints,
        integrality=np.zeros(count) if split else np.ones(count),
        bounds=Bounds(0, 1),
    )
    if not result.success:
        return None
    return float(-result.fun)
