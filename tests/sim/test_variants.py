"""Tasks served by model variants in the simulator: degrade before dropping, honour the floor, say who answered.

The chooser, routing and backend turn are the server's own (``tests/engine/test_differential_variants.py``
shows the two decide alike); these runs check what a user reads off a simulated cluster.
"""

from __future__ import annotations

import pytest

from squishy.control import ControlConfig
from squishy.profiles import Profile
from squishy.scheduler import Workload
from squishy.scheduler.variants import Task, Variant
from squishy.sim import SimConfig, Simulation

# Three variants, each about twice as costly per request as the next at large batches.
PROFILES = {
    "large": Profile.from_dict({"model": "large", "batch_ms": {"1": 8, "8": 20, "32": 64}}),
    "medium": Profile.from_dict({"model": "medium", "batch_ms": {"1": 6, "8": 12, "32": 32}}),
    "small": Profile.from_dict({"model": "small", "batch_ms": {"1": 4, "8": 7, "32": 16}}),
}
LADDER = (Variant("large", 0.80), Variant("medium", 0.76), Variant("small", 0.70))
BACKENDS = 4
LARGE_CAPACITY = BACKENDS * 32 / 0.064  # requests/s that "large" alone serves at its largest batch


def run(rate: float, floor: float = 0.0, seed: int = 1) -> dict:
    task = Task("classify", 100.0, rate, LADDER, floor)
    config = SimConfig(
        duration_s=40.0,
        warmup_s=12.0,
        seed=seed,
        control=ControlConfig(epoch_s=10.0, min_interval_s=5.0, max_headroom=2.0),
        capacity=BACKENDS,
    )
    return Simulation(Workload(), PROFILES, None, "squishy", config, tasks=[task]).run().summary


def test_at_twice_the_accurate_variants_capacity_the_task_degrades_in_part_and_drops_nothing():
    summary = run(2 * LARGE_CAPACITY)
    task = summary["tasks"]["classify"]
    assert summary["overall"]["good_rate"] >= 0.99
    assert task["shed"] == 0
    answered = {model: count for model, count in task["answered_in_time"].items() if count}
    assert len(answered) >= 2  # a mix of variants, not everything on the cheapest
    assert task["delivered_accuracy"] > 0.71  # above serving everything on "small" (0.70)
    assert sum(task["answered_in_time"].values()) == summary["overall"]["good"]


def test_light_load_is_answered_by_the_most_accurate_variant_alone():
    summary = run(0.3 * LARGE_CAPACITY)
    task = summary["tasks"]["classify"]
    assert summary["overall"]["good_rate"] == 1.0
    assert task["answered_in_time"]["large"] == summary["overall"]["good"]
    assert task["delivered_accuracy"] == pytest.approx(0.80, abs=1e-3)


def test_below_the_accuracy_floor_the_task_sheds_instead_of_degrading():
    summary = run(2 * LARGE_CAPACITY, floor=0.78)
    task = summary["tasks"]["classify"]
    assert task["answered_in_time"]["medium"] == task["answered_in_time"]["small"] == 0
    assert task["shed"] > 0.3 * task["sent"]
    assert summary["overall"]["late"] == 0


def test_tasks_need_the_control_loop_to_choose_their_variants():
    task = Task("classify", 100.0, 10.0, LADDER)
    with pytest.raises(ValueError, match="control loop"):
        Simulation(Workload(), PROFILES, None, "squishy", SimConfig(duration_s=1.0), tasks=[task])
