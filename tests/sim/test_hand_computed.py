"""One backend, a hand-made arrival sequence, every outcome worked out by hand.

Profile ℓ(n) = 10 + 2n ms (ℓ(1) = 12, ℓ(2) = 14, ℓ(3) = 16, ℓ(4) = 18, ℓ(5) = 20), SLO 40 ms, plan batch
4, no network delay, no pre/post-processing. Sends at t = 0, 1, ..., 9 and 30 ms (deadline = send + 40).
With a duty cycle of 22 ms the runtime's burst limit (``squishy.batching.limits``) stays at the plan's
batch: (40 − 22 + ℓ(4)) / 2 = 18 ms = ℓ(4).

Early drop (squishy):
- t=0: request 0 finds the backend idle and runs alone: [0] from 0 to 12 (good).
- t=12: 1..9 are queued. Window [1,2,3,4]: 12 + 18 = 30 ≤ 41, so [1..4] runs from 12 to 30 (good).
- t=30: 5..9 and 30 are queued. [5,6,7,8] would end at 48 > 45; [6..9] at 48 > 46; [7,8,9,30] at
  48 > 47; [8,9,30] (3 inputs) at 30 + 16 = 46 ≤ 48. So 5, 6, 7 are dropped at t=30 and [8,9,30] runs
  from 30 to 46 (all good).
Lazy drop (Clipper's rule, squishy's dispatch otherwise):
- [0] 0→12 and [1..4] 12→30 as before.
- t=30: nothing has expired (deadline 45 ≥ 30): [5,6,7,8] runs 30→48; 5, 6, 7 are late (45, 46, 47 <
  48), 8 is just in time (48 ≤ 48).
- t=48: 9 (deadline 49) has not expired: [9, 30] runs 48→62; 9 is late, 30 is good.
Early drop with a duty cycle of 18 ms: the burst limit is (40 − 18 + 18) / 2 = 20 ms = ℓ(5), batch 5.
- [0] 0→12. t=12: [1..5] ends at 32 ≤ 41, runs 12→32.
- t=32: 6..9 and 30 queued. [6,7,8,9,30] would end at 52 > 46; [7,8,9,30] at 50 > 47; [8,9,30] at
  48 ≤ 48. So 6 and 7 are dropped and [8,9,30] runs 32→48 (good): one drop fewer than with batch 4.
"""

from __future__ import annotations

from squishy.profiles import Profile
from squishy.scheduler import Allocation, Backend, Plan, Session, Workload
from squishy.sim import Arrivals, SimConfig, Simulation

SENDS_MS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 30)


def run(system: str, duty_cycle_ms: float = 22.0) -> Simulation:
    profile = Profile.linear("m", 2.0, 10.0, max_batch=8)
    workload = Workload(sessions=(Session("m", 40.0, 100.0),))
    plan = Plan(
        backends=(
            Backend(0, duty_cycle_ms, (Allocation("m", 40.0, 100.0, batch=4, latency_ms=18.0, budget_ms=40.0),)),
        ),
        lower_bound=0.5,
    )
    config = SimConfig(
        duration_s=0.1,
        warmup_s=0.0,
        network_ms=0.0,
        arrivals=Arrivals.replay([t / 1000.0 for t in SENDS_MS]),
        log_batches=True,
    )
    simulation = Simulation(workload, {"m": profile}, plan, system, config)
    simulation.run()
    return simulation


def test_early_drop_outcomes_by_hand():
    simulation = run("squishy")
    assert simulation.batch_log == [
        (0, 0.0, 12.0, [0.0], "m"),
        (0, 12.0, 30.0, [1.0, 2.0, 3.0, 4.0], "m"),
        ("drop", 30.0, [5.0, 6.0, 7.0]),
        (0, 30.0, 46.0, [8.0, 9.0, 30.0], "m"),
    ]
    totals = simulation.result().summary["overall"]
    assert (totals["sent"], totals["good"], totals["late"], totals["dropped"]) == (11, 8, 0, 3)


def test_lazy_drop_outcomes_by_hand():
    simulation = run("no-early-drop")
    assert simulation.batch_log == [
        (0, 0.0, 12.0, [0.0], "m"),
        (0, 12.0, 30.0, [1.0, 2.0, 3.0, 4.0], "m"),
        (0, 30.0, 48.0, [5.0, 6.0, 7.0, 8.0], "m"),
        (0, 48.0, 62.0, [9.0, 30.0], "m"),
    ]
    totals = simulation.result().summary["overall"]
    assert (totals["sent"], totals["good"], totals["late"], totals["dropped"]) == (11, 7, 4, 0)
    assert totals["p50_ms"] is not None and totals["p99_ms"] >= 32.0  # request 30 waited 18 + 14 ms


def test_burst_limit_outcomes_by_hand():
    simulation = run("squishy", duty_cycle_ms=18.0)
    assert simulation.batch_log == [
        (0, 0.0, 12.0, [0.0], "m"),
        (0, 12.0, 32.0, [1.0, 2.0, 3.0, 4.0, 5.0], "m"),
        ("drop", 32.0, [6.0, 7.0]),
        (0, 32.0, 48.0, [8.0, 9.0, 30.0], "m"),
    ]
    totals = simulation.result().summary["overall"]
    assert (totals["sent"], totals["good"], totals["late"], totals["dropped"]) == (11, 9, 0, 2)
