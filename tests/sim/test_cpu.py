"""Host CPU models: a FIFO pool of host cores (cluster nodes) and processor sharing (one CPU machine)."""

from __future__ import annotations

import numpy as np
import pytest

from squishy.sim.cpu import HostPool, SharedCpu
from squishy.sim.engine import Engine


def test_a_host_pool_serves_first_come_first_served_on_its_cores():
    pool = HostPool(2)
    never = np.full(5, np.inf)
    starts = pool.serve(np.array([0.0, 0.0, 0.0, 1.0, 10.0]), np.array([4.0, 4.0, 4.0, 1.0, 1.0]), never)
    # Two cores: the third job waits for the first free core (4 ms), the fourth for the next (4 ms).
    assert starts.tolist() == [0.0, 0.0, 4.0, 4.0, 10.0]
    assert pool.busy_ms == 14.0


def test_a_job_that_cannot_start_in_time_is_shed_without_taking_a_core():
    pool = HostPool(1)
    starts = pool.serve(np.array([0.0, 0.0, 0.0]), np.array([5.0, 5.0, 5.0]), np.array([10.0, 2.0, 10.0]))
    assert starts[0] == 0.0 and np.isnan(starts[1]) and starts[2] == 5.0  # the shed job left the core free
    assert pool.busy_ms == 10.0


def run_jobs(cores: float, jobs: list[tuple[str, float, float]]) -> dict[str, float]:
    """(thread, release ms, work ms) → finish time of each job, on a processor-sharing CPU."""
    engine = Engine()
    cpu = SharedCpu(engine, cores, priority=0)
    threads = {}
    finished: dict[str, float] = {}
    for index, (name, release, work) in enumerate(jobs):
        thread = threads.setdefault(name, cpu.thread(name))
        label = f"{name}{index}"
        engine.schedule(
            0.0, 0, cpu.submit, thread, work, lambda label=label: finished.__setitem__(label, engine.now_ms)
        )
        del release
    engine.run()
    return finished


def test_runnable_threads_share_the_cores_and_each_runs_its_jobs_in_order():
    # One core, two threads with 10 ms each: both progress at half speed and finish at 20 ms.
    assert run_jobs(1.0, [("a", 0, 10.0), ("b", 0, 10.0)]) == {"a0": 20.0, "b1": 20.0}
    # Two cores, three threads: each runs at 2/3 of a core until the short one ends.
    done = run_jobs(2.0, [("a", 0, 4.0), ("b", 0, 10.0), ("c", 0, 10.0)])
    assert done["a0"] == pytest.approx(6.0)  # 4 ms of work at 2/3 speed
    assert done["b1"] == pytest.approx(6.0 + (10.0 - 4.0))  # then alone on its core
    # One thread's jobs run one after another, never side by side.
    assert run_jobs(4.0, [("a", 0, 3.0), ("a", 0, 3.0)]) == {"a0": 3.0, "a1": 6.0}


def test_a_job_released_later_waits_for_its_release_and_earlier_releases_go_first():
    engine = Engine()
    cpu = SharedCpu(engine, 1.0, priority=0)
    thread = cpu.thread("generator")
    order: list[tuple[str, float]] = []
    cpu.submit(thread, 1.0, lambda: order.append(("late", engine.now_ms)), release_ms=50.0)
    cpu.submit(thread, 1.0, lambda: order.append(("now", engine.now_ms)))
    engine.run()
    assert order == [("now", 1.0), ("late", 51.0)]


def test_python_work_shares_one_interpreter_lock_whatever_the_cores():
    engine = Engine()
    cpu = SharedCpu(engine, 4.0, priority=0)
    done: dict[str, float] = {}
    for name, gil in (("loop", True), ("slot-python", True), ("slot-compute", False)):
        cpu.submit(cpu.thread(name), 10.0, lambda name=name: done.__setitem__(name, engine.now_ms), gil=gil)
    engine.run()
    # Four cores, but the two Python jobs share one lock: half a core each; the compute runs at full speed.
    assert done == {"slot-compute": 10.0, "loop": 20.0, "slot-python": 20.0}
