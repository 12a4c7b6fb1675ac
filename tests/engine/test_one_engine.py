"""The rules of the one engine that the code itself must keep."""

from __future__ import annotations

import re
from pathlib import Path

import squishy

SOURCE = Path(squishy.__file__).parent
# Reading a clock: the time module, an event loop's time, or a sleep that stands in for one.
CLOCK_READS = re.compile(r"\btime\.\w+\(|\bloop\.time\(|\basyncio\.sleep\(|\bdatetime\.\w+\(|\bimport time\b")


def test_the_runtime_and_the_control_loop_read_time_only_through_the_injected_clock():
    offenders = []
    for package in ("runtime", "control", "batching", "routing.py", "cluster"):
        path = SOURCE / package
        for source in [path] if path.is_file() else sorted(path.rglob("*.py")):
            for number, line in enumerate(source.read_text().splitlines(), 1):
                if CLOCK_READS.search(line.split("#", 1)[0]):
                    offenders.append(f"{source.relative_to(SOURCE)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_simulator_keeps_no_copy_of_the_engine():
    """The simulator imports the server's router, control loop, placement and backend turn."""
    simulation = (SOURCE / "sim" / "simulation.py").read_text()
    for shared in ("squishy.routing", "squishy.control", "squishy.cluster.assign", "squishy.batching.turn"):
        assert f"from {shared} import" in simulation
    for gone in ("frontend.py", "control.py", "arrivals.py"):
        assert not (SOURCE / "sim" / gone).exists()
    core = (SOURCE / "runtime" / "core.py").read_text()
    for shared in ("squishy.routing", "squishy.control", "squishy.cluster.assign", "squishy.batching.turn"):
        assert f"from {shared} import" in core
