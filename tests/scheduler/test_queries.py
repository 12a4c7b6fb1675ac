"""Query analysis: the SLO split moves with the fan-out, as in the paper's two-stage example."""

from __future__ import annotations

import math

import pytest

from squishy.profiles import Profile
from squishy.scheduler import Query, QueryStage, Session, Workload, make_plan
from squishy.scheduler.queries import Stage, split_budget, stage_names

# Throughput per backend (req/s) at a latency budget (ms) for stages X and Y (paper, Section 5).
TABLE_X = {40: 200.0, 50: 250.0, 60: 300.0}
TABLE_Y = {40: 300.0, 50: 400.0, 60: 500.0}


def throughput(table: dict[int, float]):
    def at(budget_ms: float) -> float:
        fitting = [t for k, t in table.items() if k <= budget_ms + 1e-9]
        return max(fitting, default=0.0)

    return at


def cost(rate: float, table: dict[int, float]):
    at = throughput(table)
    return lambda k: rate / at(k) if at(k) > 0 else math.inf


@pytest.mark.parametrize(("gamma", "expected"), [(0.1, (60, 40)), (1.0, (50, 50)), (10.0, (40, 60))])
def test_paper_two_stage_split(gamma, expected):
    rate = 100.0
    stages = [Stage("X", -1, cost(rate, TABLE_X)), Stage("Y", 0, cost(rate * gamma, TABLE_Y))]
    split = split_budget(stages, 100.0, step_ms=1.0)
    assert (split["X"], split["Y"]) == expected


@pytest.mark.parametrize(("gamma", "best"), [(0.1, 272.7), (1.0, 153.8), (10.0, 40.0)])
def test_split_maximizes_average_throughput_per_backend(gamma, best):
    """The paper's yardstick: queries/s per backend, p·T_X/(p+q) with γ·p·T_X = q·T_Y."""
    stages = [Stage("X", -1, cost(1.0, TABLE_X)), Stage("Y", 0, cost(gamma, TABLE_Y))]
    split = split_budget(stages, 100.0, step_ms=10.0)
    backends_per_query = 1 / throughput(TABLE_X)(split["X"]) + gamma / throughput(TABLE_Y)(split["Y"])
    assert 1 / backends_per_query == pytest.approx(best, abs=0.1)


def test_tree_budgets_respect_every_path():
    """A detector feeding two recognizers: each root-to-leaf path fits the SLO, leaves use what is left."""
    face = Profile.linear("face", 1.0, 4.0, max_batch=32)
    car = Profile.linear("car", 2.0, 6.0, max_batch=32)
    ssd = Profile.linear("ssd", 10.0, 20.0, max_batch=16)
    query = Query("traffic", 400.0, 50.0, QueryStage("ssd", children=(QueryStage("face", 1.5), QueryStage("car", 0.8))))
    plan = make_plan(Workload(queries=(query,)), {"ssd": ssd, "face": face, "car": car})
    split = plan.query_slo_split["traffic"]
    assert split["ssd"] + split["face"] <= 400.0
    assert split["ssd"] + split["car"] <= 400.0
    assert split["ssd"] + split["face"] == pytest.approx(400.0)
    rates = plan.rates_by_session()
    assert sum(r for k, r in rates.items() if k.model == "face") == pytest.approx(75.0)
    assert sum(r for k, r in rates.items() if k.model == "car") == pytest.approx(40.0)


def test_query_analysis_beats_an_even_split():
    """When one stage is far costlier, giving it more of the SLO needs fewer backends."""
    heavy = Profile.linear("heavy", 8.0, 30.0, max_batch=64)
    light = Profile.linear("light", 0.5, 2.0, max_batch=64)
    query = Query("q", 200.0, 400.0, QueryStage("heavy", children=(QueryStage("light", 1.0),)))
    workload = Workload(queries=(query,))
    catalog = {"heavy": heavy, "light": light}
    analysed = make_plan(workload, catalog)
    even = make_plan(workload, catalog, query_analysis=False)
    assert even.query_slo_split["q"] == {"heavy": 100.0, "light": 100.0}
    assert analysed.query_slo_split["q"]["heavy"] > 100.0
    assert analysed.num_backends < even.num_backends


def test_stage_names_are_unique_when_a_model_repeats():
    root = QueryStage("det", children=(QueryStage("cls"), QueryStage("cls", 2.0)))
    assert [n for n, *_ in stage_names(root)] == ["det", "cls", "cls#2"]


def test_query_sessions_merge_with_plain_sessions_of_the_same_model_and_slo():
    light = Profile.linear("light", 0.5, 2.0, max_batch=64)
    query = Query("q", 100.0, 10.0, QueryStage("light"))
    workload = Workload(sessions=(Session("light", 100.0, 5.0),), queries=(query,))
    plan = make_plan(workload, {"light": light})
    assert plan.rates_by_session() == {Session("light", 100.0, 0).key: pytest.approx(15.0)}
