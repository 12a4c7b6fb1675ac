"""The cluster simulator: the plan and the batching policy executed in simulated time.

``Simulation`` runs one workload under one system (squishy, a baseline, or an ablation) and reports good /
late / dropped requests; ``squishy.sim.search`` finds the highest load at which a system keeps 99% of
requests good; ``squishy.sim.studies`` holds the Nexus case studies behind ``squishy simulate``.
"""

from squishy.sim.arrivals import ArrivalSpec, ArrivalStream, RateSchedule
from squishy.sim.control import ControlConfig
from squishy.sim.simulation import SimConfig, SimResult, Simulation
from squishy.sim.systems import ABLATIONS, BASELINES, SYSTEMS, SystemSpec, plan_for

__all__ = [
    "ABLATIONS",
    "BASELINES",
    "SYSTEMS",
    "ArrivalSpec",
    "ArrivalStream",
    "ControlConfig",
    "RateSchedule",
    "SimConfig",
    "SimResult",
    "Simulation",
    "SystemSpec",
    "plan_for",
]
