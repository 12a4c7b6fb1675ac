"""Incremental re-planning moves as few sessions as possible and keeps the plan valid."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from squishy.profiles import Profile
from squishy.scheduler import Plan, Session, Workload, make_plan
from squishy.scheduler.demand import build_demands
from squishy.scheduler.replan import replan

from .invariants import violations
from .strategies import workloads


def with_rate(workload: Workload, index: int, factor: float) -> Workload:
    sessions = list(workload.sessions)
    sessions[index] = dataclasses.replace(sessions[index], rate=sessions[index].rate * factor)
    return dataclasses.replace(workload, sessions=tuple(sessions))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(max_sessions=10), st.data())
def test_one_rate_changing_by_ten_percent_moves_at_most_two_sessions(case, data):
    workload, catalog = case
    previous = make_plan(workload, catalog)
    index = data.draw(st.integers(0, len(workload.sessions) - 1))
    factor = data.draw(st.sampled_from([0.9, 1.1]))
    changed = with_rate(workload, index, factor)
    result = replan(previous, changed, catalog)
    demands, _, _ = build_demands(changed, catalog)
    assert violations(result.plan, demands, changed.device.memory_mb) == []
    assert len(result.moved) <= 2, result.moved


def paper_workload(rate_a: float) -> tuple[Workload, dict[str, Profile]]:
    catalog = {
        "A": Profile.from_dict({"model": "A", "batch_ms": {"4": 50, "8": 75, "16": 100}}),
        "B": Profile.from_dict({"model": "B", "batch_ms": {"4": 50, "8": 90, "16": 125}}),
        "C": Profile.from_dict({"model": "C", "batch_ms": {"4": 60, "8": 95, "16": 125}}),
    }
    sessions = (Session("A", 200, rate_a), Session("B", 250, 160), Session("C", 250, 160))
    return Workload(sessions=sessions), catalog


def test_unchanged_rates_move_nothing_and_keep_backend_ids():
    workload, catalog = paper_workload(384)
    previous = make_plan(workload, catalog)
    result = replan(previous, workload, catalog)
    assert result.moved == ()
    assert result.released == () and result.added == ()
    assert result.plan.to_dict()["backends"] == previous.to_dict()["backends"]


def test_a_residual_grows_in_place_and_a_full_backend_evicts_one_session():
    workload, catalog = paper_workload(384)
    previous = make_plan(workload, catalog)
    grown = dataclasses.replace(workload, sessions=(*workload.sessions[:2], Session("C", 250, 180)))
    result = replan(previous, grown, catalog)
    assert result.moved == ()  # C's residual (now 52 req/s) grows on the backend it has alone
    alone = next(b for b in result.plan.backends if [a.model for a in b.allocations] == ["C"] and b.occupancy < 1)
    assert alone.allocations[0].rate == 52
    # A and B share a backend with zero slack: when A grows there, exactly one of them must move.
    result = replan(previous, paper_workload(384 + 30)[0], catalog)
    assert len(result.moved) == 1


def test_a_session_that_needs_one_more_whole_backend_takes_over_its_residual_backend():
    # A at 470 req/s = 2 whole backends + 150 req/s, which runs alone at batch 16 (occupancy 0.94).
    workload, catalog = paper_workload(470)
    previous = make_plan(workload, catalog)
    alone = [
        b.backend_id for b in previous.backends if [a.model for a in b.allocations] == ["A"] and b.occupancy < 0.99
    ]
    result = replan(previous, paper_workload(490)[0], catalog)  # now 3 whole backends + 10 req/s
    full_a = [b.backend_id for b in result.plan.backends if [a.model for a in b.allocations] == ["A"]]
    assert set(alone) <= set(full_a)
    assert sum(1 for _ in result.moved) <= 1


def test_falling_load_releases_backends():
    workload, catalog = paper_workload(384)
    previous = make_plan(workload, catalog)
    result = replan(previous, paper_workload(40)[0], catalog)
    assert result.plan.num_backends < previous.num_backends
    assert result.released
    demands, _, _ = build_demands(paper_workload(40)[0], catalog)
    assert violations(result.plan, demands, None) == []


def test_plans_round_trip_through_json():
    workload, catalog = paper_workload(384)
    plan = make_plan(workload, catalog)
    again = Plan.from_dict(plan.to_dict())
    assert again.to_dict() == plan.to_dict()
    assert replan(again, workload, catalog).moved == ()
