"""Composite call trees and the split of their SLO (query analysis), without a server."""

from __future__ import annotations

import pytest

from squishy.profiles import Profile
from squishy.runtime.composite import below_ms, ensemble_tree
from squishy.runtime.ensemble import Ensemble
from squishy.runtime.repository import ModelRepository
from squishy.scheduler import Settings
from squishy.scheduler.demand import margin_ms, scheduled_profile
from squishy.scheduler.queries import split_tree, stage_cost

DIAMOND = """
name: "diamond"
platform: "ensemble"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling {
  step [
    {
      model_name: "join"
      input_map [ { key: "a" value: "left" }, { key: "b" value: "deep" } ]
      output_map { key: "y" value: "y" }
    },
    { model_name: "m" input_map { key: "x" value: "x" } output_map { key: "y" value: "left" } },
    { model_name: "m" input_map { key: "x" value: "x" } output_map { key: "y" value: "right" } },
    { model_name: "n" input_map { key: "x" value: "right" } output_map { key: "y" value: "deep" } }
  ]
}
"""


def diamond(tmp_path) -> Ensemble:  # type: ignore[no-untyped-def]
    (tmp_path / "diamond" / "1").mkdir(parents=True)
    (tmp_path / "diamond" / "config.pbtxt").write_text(DIAMOND)
    return Ensemble.from_spec(ModelRepository(tmp_path).load("diamond")[0])


def test_a_steps_parent_is_the_latest_step_that_feeds_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ensemble = diamond(tmp_path)
    stages, step_stage = ensemble_tree(ensemble)
    assert [(s.name, s.parent) for s in stages] == [("diamond", -1), ("m", 0), ("m#2", 0), ("n", 2), ("join", 3)]
    assert [stages[step_stage[id(step)]].model for step in ensemble.steps] == ["join", "m", "m", "n"]
    budgets = {"diamond": 1.0, "m": 40.0, "m#2": 20.0, "n": 30.0, "join": 10.0}
    assert below_ms(stages, budgets) == [60.0, 0.0, 40.0, 10.0, 0.0]


def profile(name: str, batch_ms: dict[str, float]) -> Profile:
    return Profile.from_dict({"model": name, "device": "cpu", "batch_ms": batch_ms, "interpolate": True})


def chain_cost(cheap: Profile, costly: Profile, rates: tuple[float, float], k_cheap: float, k_costly: float) -> float:
    settings = Settings()
    return sum(
        stage_cost(scheduled_profile(p, settings), rate, k - margin_ms(p, settings))
        for p, rate, k in ((cheap, rates[0], k_cheap), (costly, rates[1], k_costly))
    )


@pytest.mark.parametrize("gamma", [1.0, 8.0, 32.0])
def test_the_split_is_the_cheapest_and_leaves_the_composite_one_step(gamma: float) -> None:
    cheap = profile("cheap", {"1": 2.0, "8": 4.0, "32": 10.0})
    costly = profile("costly", {"1": 10.0, "8": 30.0, "32": 100.0})
    rates = (100.0, 100.0 * gamma)
    rows = [("app", -1, None, 100.0), ("cheap", 0, cheap, rates[0]), ("costly", 1, costly, rates[1])]
    budgets = split_tree(rows, 200.0, Settings())
    assert budgets["app"] == 1.0
    assert budgets["app"] + budgets["cheap"] + budgets["costly"] == pytest.approx(200.0)
    found = chain_cost(cheap, costly, rates, budgets["cheap"], budgets["costly"])
    every = [chain_cost(cheap, costly, rates, k, 199.0 - k) for k in range(1, 199)]
    assert found == pytest.approx(min(every))


def test_the_even_split_shares_what_the_composite_leaves_over_the_deepest_path() -> None:
    cheap = profile("cheap", {"1": 2.0, "8": 4.0})
    rows = [("app", -1, None, 10.0), ("a", 0, cheap, 10.0), ("b", 1, cheap, 10.0), ("c", 0, cheap, 10.0)]
    assert split_tree(rows, 101.0, Settings(), even=True) == {"app": 1.0, "a": 50.0, "b": 50.0, "c": 50.0}
