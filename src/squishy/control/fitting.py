"""Fitting load to capacity: the largest multiple of the measured rates whose plan fits the backends.

One search for every caller: the server (plan for up to 2× the measured load while slots are spare,
for the share that fits when they are not), the simulator's control loop (a cluster of N backends) and
the simulator's fixed-cluster baselines (the batch-oblivious shares scaled up to fill every device).
When demand exceeds capacity, the plan admits the largest proportional share of every session's rate
that fits, and early drop sheds the rest at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from squishy.errors import SquishyError
from squishy.scheduler import Plan

# Below this share of the load nothing is worth planning: every session needs its own time on a slot.
MIN_SCALE = 1e-4
# Steps of ×2 (growing) or ×¼ (shrinking) while bracketing, and of bisection.
MAX_BRACKET_STEPS = 40
MAX_BISECTION_STEPS = 60


class DoesNotFit(SquishyError):
    """No share of the load fits the capacity; ``plan`` is the smallest plan tried (at ``scale``)."""

    def __init__(self, message: str, plan: Plan, scale: float) -> None:
        super().__init__(message)
        self.plan = plan
        self.scale = scale


def largest_fitting(
    make: Callable[[float], Plan],
    capacity: int,
    *,
    start: float = 1.0,
    upper: float | None = None,
    relative_tolerance: float = 0.02,
) -> tuple[float, Plan]:
    """The largest scale s (≤ ``upper``; unbounded when None) with ``make(s).num_backends ≤ capacity``.

    From ``start``: when it fits, grow by ×2 until a scale does not (or ``upper`` is reached); when it
    does not, shrink by ×¼ until one does. Then bisect on a log scale until the bracket is within
    ``relative_tolerance``. Plan size is monotone in the scale for every policy squishy has, so the
    bracket holds the answer. Raises ``DoesNotFit`` when even ``MIN_SCALE`` does not fit.
    """
    if upper is not None:
        start = min(start, upper)
    plan = make(start)
    low: tuple[float, Plan] | None = None
    high: float | None = None
    if plan.num_backends <= capacity:
        low = (start, plan)
        scale = start
        for _ in range(MAX_BRACKET_STEPS):
            if upper is not None and scale >= upper:
                return low
            scale = scale * 2.0 if upper is None else min(scale * 2.0, upper)
            trial = make(scale)
            if trial.num_backends > capacity:
                high = scale
                break
            low = (scale, trial)
        if high is None:
            return low
    else:
        high = start
        scale = start
        smallest = (start, plan)
        for _ in range(MAX_BRACKET_STEPS):
            scale /= 4.0
            if scale < MIN_SCALE:
                break
            trial = make(scale)
            smallest = (scale, trial)
            if trial.num_backends <= capacity:
                low = (scale, trial)
                break
            high = scale
        if low is None:
            raise DoesNotFit(
                f"no share of the load fits {capacity} backends (the smallest plan tried needs "
                f"{smallest[1].num_backends})",
                smallest[1],
                smallest[0],
            )
    for _ in range(MAX_BISECTION_STEPS):
        if high <= low[0] * (1.0 + relative_tolerance):
            break
        middle = math.sqrt(low[0] * high)
        trial = make(middle)
        if trial.num_backends <= capacity:
            low = (middle, trial)
        else:
            high = middle
    return low
