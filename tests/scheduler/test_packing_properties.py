"""Property tests: every plan squishy produces obeys the packing's rules, whatever the workload."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from squishy.scheduler import make_plan
from squishy.scheduler.demand import build_demands
from squishy.scheduler.replan import replan

from .invariants import violations
from .strategies import workloads

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(workloads())
def test_every_plan_is_valid(case):
    workload, catalog = case
    plan = make_plan(workload, catalog)
    demands, _, idle = build_demands(workload, catalog)
    assert violations(plan, demands, workload.device.memory_mb) == []
    # Rate-0 sessions get no capacity but stay known to the plan.
    assert {s.key for s in workload.sessions if s.rate == 0} == set(idle)
    assert plan.num_backends >= plan.lower_bound - 1e-9


@SETTINGS
@given(workloads(), st.data())
def test_replanned_plans_are_valid_for_any_new_rates(case, data):
    workload, catalog = case
    previous = make_plan(workload, catalog)
    factors = [data.draw(st.sampled_from([0.0, 0.5, 0.9, 1.0, 1.1, 1.5, 3.0])) for _ in workload.sessions]
    changed = dataclasses.replace(
        workload,
        sessions=tuple(
            dataclasses.replace(s, rate=s.rate * f) for s, f in zip(workload.sessions, factors, strict=True)
        ),
    )
    result = replan(previous, changed, catalog)
    demands, _, _ = build_demands(changed, catalog)
    assert violations(result.plan, demands, changed.device.memory_mb) == []


@SETTINGS
@given(workloads())
def test_residual_aware_bound_is_tighter_yet_never_above_a_plan(case):
    workload, catalog = case
    plan = make_plan(workload, catalog)
    assert plan.lower_bound - 1e-9 <= plan.residual_bound <= plan.num_backends + 1e-9
