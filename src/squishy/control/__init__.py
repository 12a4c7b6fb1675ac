"""The control loop's decisions: measured rates per session, and when to re-plan.

Both are pure state machines driven by timestamps the caller passes in, so the real server (wall
clock) and the simulator (simulated clock) run the same rules.
"""

from squishy.control.epochs import EpochPolicy, ReplanReason
from squishy.control.rates import RateEstimator

__all__ = ["EpochPolicy", "RateEstimator", "ReplanReason"]
