"""The pure planning core: squishy bin packing, incremental re-planning, query analysis, baselines.

Workload + profiles in, plan out. Nothing here reads a clock or touches a file.
"""

from squishy.scheduler.plan import Allocation, Backend, Member, Plan
from squishy.scheduler.planner import POLICIES, make_plan
from squishy.scheduler.workload import Device, PrefixGroup, Query, QueryStage, Session, SessionKey, Settings, Workload

__all__ = [
    "POLICIES",
    "Allocation",
    "Backend",
    "Device",
    "Member",
    "Plan",
    "PrefixGroup",
    "Query",
    "QueryStage",
    "Session",
    "SessionKey",
    "Settings",
    "Workload",
    "make_plan",
]
