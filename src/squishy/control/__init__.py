"""The control loop: measured rates per session, when to re-plan, and plans that fit the capacity.

Pure state machines driven by timestamps the caller passes in, so the real server (wall clock) and
the simulator (simulated clock) run the same rules.
"""

from squishy.control.epochs import EpochPolicy, ReplanReason
from squishy.control.fitting import DoesNotFit, largest_fitting
from squishy.control.loop import Choice, Chooser, ControlConfig, ControlLoop, PlanDecision, Planner, PlanRequest
from squishy.control.rates import RateEstimator

__all__ = [
    "Choice",
    "Chooser",
    "ControlConfig",
    "ControlLoop",
    "DoesNotFit",
    "EpochPolicy",
    "PlanDecision",
    "PlanRequest",
    "Planner",
    "RateEstimator",
    "ReplanReason",
    "largest_fitting",
]
