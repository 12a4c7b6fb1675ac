"""Query analysis: split a complex query's end-to-end SLO across its stages.

A query is a tree of models; stage v sees rate R_v = R·Π γ along its path. Giving stage v a budget of k
ms costs c_v(k) = R_v / T_v(k) backends, where T_v(k) is the best throughput per backend whose worst-case
latency fits k. The split minimizes Σ_v c_v(k_v) subject to Σ k along every root-to-leaf path ≤ L, by a
dynamic program over the tree with time in steps of ``step_ms``:

    f(u, t) = min over k ≤ t of  c_u(k) + Σ_children f(child, t − k)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from squishy.errors import InfeasibleError
from squishy.profiles import Profile
from squishy.scheduler.workload import Query, QueryStage, Session, Settings

# Budget grid: 1 ms steps, but never more than this many steps per query (keeps the DP O(steps²) small).
MAX_QUERY_STEPS = 1000


@dataclass(frozen=True)
class Stage:
    """A query stage in preorder: its unique name, its parent's index (-1 for the root), its cost function."""

    name: str
    parent: int
    cost: Callable[[float], float]  # backends needed at a budget of k ms (inf when k cannot work)


def stage_names(root: QueryStage) -> list[tuple[str, QueryStage, int, float]]:
    """(unique name, stage, parent index, rate multiplier Πγ) for every stage, in preorder.

    A model that appears twice in one tree gets ``#2``, ``#3``... on its later appearances.
    """
    out: list[tuple[str, QueryStage, int, float]] = []
    seen: dict[str, int] = {}

    def visit(stage: QueryStage, parent: int, multiplier: float) -> None:
        seen[stage.model] = seen.get(stage.model, 0) + 1
        name = stage.model if seen[stage.model] == 1 else f"{stage.model}#{seen[stage.model]}"
        index = len(out)
        out.append((name, stage, parent, multiplier))
        for child in stage.children:
            visit(child, index, multiplier * child.gamma)

    visit(root, -1, 1.0)
    return out


def split_budget(stages: Sequence[Stage], slo_ms: float, step_ms: float) -> dict[str, float]:
    """The minimum-cost split of ``slo_ms`` over a stage tree; leaves get all the time left on their path."""
    steps = math.floor(slo_ms / step_ms + 1e-9)
    children: list[list[int]] = [[] for _ in stages]
    for index, stage in enumerate(stages):
        if stage.parent >= 0:
            children[stage.parent].append(index)
    # cost[u][k] for k = 0..steps (k = 0 is never allowed: every stage needs some time).
    cost = [np.array([math.inf] + [s.cost(k * step_ms) for k in range(1, steps + 1)]) for s in stages]
    best = [np.full(steps + 1, math.inf) for _ in stages]
    choice = [np.zeros(steps + 1, dtype=np.int64) for _ in stages]
    for u in reversed(range(len(stages))):  # preorder reversed: children before parents
        rest = np.zeros(steps + 1)
        for child in children[u]:
            rest = rest + best[child]
        for t in range(1, steps + 1):
            # k runs 1..t; rest is indexed by the time left, t - k. Ties go to the larger k.
            totals = cost[u][1 : t + 1] + rest[t - 1 :: -1][:t]
            k = int(t - np.argmin(totals[::-1]))
            best[u][t] = totals[k - 1]
            choice[u][t] = k
    if not math.isfinite(best[0][steps]):
        raise InfeasibleError("no split of the SLO lets every stage meet its profile")
    budgets: dict[str, float] = {}

    def assign(u: int, t: int) -> None:
        k = t if not children[u] else int(choice[u][t])
        budgets[stages[u].name] = k * step_ms
        for child in children[u]:
            assign(child, t - k)

    assign(0, steps)
    return budgets


def stage_cost(profile: Profile, rate: float, budget_ms: float, memory_mb: float | None = None) -> float:
    """Backends one stage needs at ``rate`` when each request may spend ``budget_ms`` in it.

    Rate-aware: a batch b with duty cycle d = min(b/R, budget − ℓ(b)) costs ℓ(b)/d backends, which is
    R/T(b) when the stage saturates backends and the residual's occupancy when it does not.
    """
    best = math.inf
    for batch in profile.allowed_batches:
        latency = profile.latency_ms(batch)
        if 2 * latency > budget_ms + 1e-6:
            break
        if memory_mb is not None and profile.memory(batch) > memory_mb:
            continue
        if rate <= 0:
            return 0.0
        cycle = min(1000.0 * batch / rate, budget_ms - latency)
        best = min(best, latency / cycle)
    return best


def split_query(
    query: Query,
    profiles: Mapping[str, Profile],
    settings: Settings,
    *,
    even: bool = False,
    memory_mb: float | None = None,
) -> tuple[list[Session], dict[str, float]]:
    """Per-stage sessions (model, budget as SLO, rate) and the split, for one query.

    ``even`` splits the SLO evenly over the deepest path instead (the batch-oblivious baseline's rule).
    """
    from squishy.scheduler.demand import margin_ms, scheduled_profile  # demand imports this module

    named = stage_names(query.root)
    if even:
        depth = _depth(query.root)
        split = {name: query.slo_ms / depth for name, *_ in named}
    else:
        step = settings.query_step_ms or max(1.0, query.slo_ms / MAX_QUERY_STEPS)
        stages = []
        for name, stage, parent, multiplier in named:
            profile = scheduled_profile(profiles[stage.model], settings)
            margin = margin_ms(profiles[stage.model], settings)
            rate = query.rate * multiplier

            def cost(k: float, profile: Profile = profile, margin: float = margin, rate: float = rate) -> float:
                return stage_cost(profile, rate, k - margin, memory_mb)

            stages.append(Stage(name, parent, cost))
        try:
            split = split_budget(stages, query.slo_ms, step)
        except InfeasibleError:
            raise InfeasibleError(
                f"query {query.name!r}: no split of its {query.slo_ms:g} ms SLO lets every stage meet its profile"
            ) from None
    sessions = [
        Session(model=stage.model, slo_ms=split[name], rate=query.rate * multiplier)
        for name, stage, _, multiplier in named
    ]
    return sessions, split


def _depth(stage: QueryStage) -> int:
    return 1 + max((_depth(c) for c in stage.children), default=0)


# The composite's own cost per ms of budget: it only hands tensors from one call to the next, so the DP
# gives it the least time (one step) and the models below everything else; positive only to break ties.
COMPOSITE_COST_PER_MS = 1e-9


def split_tree(
    stages: Sequence[tuple[str, int, Profile | None, float]], slo_ms: float, settings: Settings, *, even: bool = False
) -> dict[str, float]:
    """The minimum-cost split of ``slo_ms`` over a served composite's call tree.

    ``stages`` in preorder: (name, parent index, profile, rate of calls per second); the first is the
    composite itself (profile None, parent -1). Raises InfeasibleError when no split fits the profiles.
    ``even`` gives every model stage the same share of what the composite leaves, over the deepest path
    (the batch-oblivious baseline's rule), whatever it costs.
    """
    from squishy.scheduler.demand import margin_ms, scheduled_profile  # demand imports this module

    step = settings.query_step_ms or max(1.0, slo_ms / MAX_QUERY_STEPS)
    if even:
        depth = [0] * len(stages)
        for index, (_, parent, _, _) in enumerate(stages):
            depth[index] = depth[parent] + 1 if parent >= 0 else 0
        share = (slo_ms - step) / max(max(depth), 1)
        return {name: (step if parent < 0 else share) for name, parent, _, _ in stages}
    built = []
    for name, parent, profile, rate in stages:
        if profile is None:
            built.append(Stage(name, parent, lambda k: COMPOSITE_COST_PER_MS * k))
            continue
        scheduled = scheduled_profile(profile, settings)
        margin = margin_ms(profile, settings)

        def cost(k: float, profile: Profile = scheduled, margin: float = margin, rate: float = rate) -> float:
            return stage_cost(profile, rate, k - margin)

        built.append(Stage(name, parent, cost))
    return split_budget(built, slo_ms, step)
