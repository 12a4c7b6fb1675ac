"""The cluster simulator: the plan and the server's own engine executed in simulated time.

``Simulation`` runs one workload under one system (squishy, a baseline, or an ablation) and reports good /
late / dropped requests; ``squishy.sim.search`` finds the highest load at which a system keeps 99% of
requests good; ``squishy.sim.studies`` holds the Nexus case studies behind ``squishy simulate``.
"""

from squishy.arrivals import Arrivals, ArrivalStream, RateSchedule
from squishy.control import ControlConfig
from squishy.sim.simulation import MachineSpec, RequestTrace, SimConfig, SimResult, Simulation
from squishy.sim.systems import ABLATIONS, BASELINES, SYSTEMS, SystemSpec, plan_for

__all__ = [
    "ABLATIONS",
    "BASELINES",
    "SYSTEMS",
    "ArrivalStream",
    "Arrivals",
    "ControlConfig",
    "MachineSpec",
    "RateSchedule",
    "RequestTrace",
    "SimConfig",
    "SimResult",
    "Simulation",
    "SystemSpec",
    "plan_for",
]
