"""The systems the simulator compares: squishy, the Nexus paper's baselines, and squishy's ablations.

Each is defined exactly as in ``shared/design/nexus.md``:
- ``squishy``: squishy bin packing with prefix batching and query analysis, duty cycles, early drop,
  pre/post-processing overlapped with execution;
- ``clipper``: the batch-oblivious allocation (sessions sharing a device run first come, first served),
  AIMD batch sizes, lazy drop, pre-processing not overlapped;
- ``tf-serving``: the same allocation, a fixed batch B (the largest with 2ℓ(B) ≤ L) that leaves when full
  or after L − 2ℓ(B), no drop, pre-processing not overlapped;
- ablations: squishy without one idea each. ``no-squishy-scheduling`` runs the batch-oblivious
  allocation with squishy's early drop and dispatch (that allocation has no prefix batching and splits
  query SLOs evenly, so it loses those too). ``no-host-packing`` is squishy whose planner is not told the
  nodes' host CPU: it packs GPU time alone, as Nexus does.

squishy's planner is told each node's host cores and every request's host work (``planning_workload``),
so a backend is given no more requests than its node's cores can prepare. That is a departure from
Nexus, which packs GPU time only; the ``no-host-packing`` ablation measures what it is worth.

The batch-oblivious allocation gives each session a device share proportional to R ÷ T(B); on a cluster
of N devices the shares are scaled to fill the cluster (the largest scale whose packing fits N). A squishy
plan that needs more than N backends is made for the largest share of the load that fits N.
A system that does not overlap pre/post-processing plans with the device time it really sees,
ℓ(b) + b·(pre + post), and no pre/post margin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from squishy.batching.queue import DropPolicy
from squishy.control.fitting import DoesNotFit as DoesNotFit  # re-exported: searches catch it
from squishy.control.fitting import largest_fitting
from squishy.profiles import Profile
from squishy.scheduler import Plan, Workload, make_plan

if TYPE_CHECKING:
    from squishy.sim.simulation import HostSpec


@dataclass(frozen=True)
class SystemSpec:
    name: str
    policy: str = "squishy"  # the planner's policy
    dispatch: str = "squishy"  # squishy | clipper | tf-serving
    drop: DropPolicy = DropPolicy.EARLY
    overlap: bool = True  # pre/post-processing overlapped with execution
    prefix_batching: bool = True
    query_analysis: bool = True
    host_packing: bool = True  # the squishy planner is told the nodes' host CPU (batch-oblivious: never)
    description: str = ""


SYSTEMS: dict[str, SystemSpec] = {
    s.name: s
    for s in (
        SystemSpec("squishy", description="squishy (Nexus): all ideas on"),
        SystemSpec(
            "clipper",
            policy="batch-oblivious",
            dispatch="clipper",
            drop=DropPolicy.LAZY,
            overlap=False,
            description="Clipper-style: batch-oblivious allocation, AIMD batching, lazy drop, no overlap",
        ),
        SystemSpec(
            "tf-serving",
            policy="batch-oblivious",
            dispatch="tf-serving",
            drop=DropPolicy.NONE,
            overlap=False,
            description="TF-Serving-style: batch-oblivious allocation, fixed batch + timeout, no drop, no overlap",
        ),
        SystemSpec("no-prefix-batching", prefix_batching=False, description="squishy without prefix batching"),
        SystemSpec(
            "no-squishy-scheduling",
            policy="batch-oblivious",
            description="batch-oblivious allocation with squishy's early drop and dispatch",
        ),
        SystemSpec("no-early-drop", drop=DropPolicy.LAZY, description="squishy with lazy drop"),
        SystemSpec("no-query-analysis", query_analysis=False, description="squishy with query SLOs split evenly"),
        SystemSpec("no-overlap", overlap=False, description="squishy without overlapping pre/post-processing"),
        SystemSpec(
            "no-host-packing", host_packing=False, description="squishy packing GPU time only (Nexus's planner)"
        ),
    )
}
BASELINES = ("clipper", "tf-serving")
ABLATIONS = (
    "no-prefix-batching",
    "no-squishy-scheduling",
    "no-early-drop",
    "no-query-analysis",
    "no-overlap",
    "no-host-packing",
)


def device_profile(profile: Profile) -> Profile:
    """The profile a system that does not overlap pre/post-processing sees: ℓ(b) plus b times each
    request's share of its frame's pre/post-processing, done on the device's own thread."""
    extra = profile.processing_share_ms
    if extra == 0:
        return profile
    table = {b: v + b * extra for b, v in profile.batch_ms.items()}
    return replace(profile, batch_ms=table, preprocess_ms=0.0, postprocess_ms=0.0)


def planning_profiles(system: SystemSpec, profiles: Mapping[str, Profile]) -> dict[str, Profile]:
    if system.overlap:
        return dict(profiles)
    return {model: device_profile(p) for model, p in profiles.items()}


def planning_workload(system: SystemSpec, workload: Workload, host: HostSpec | None) -> Workload:
    """The workload as ``system``'s planner sees it: a squishy planner with host packing is told each
    node's cores and each request's host work (frontend handling and its per-frame share of pre/post-
    processing, ``Settings.host_cores``); every other planner is told no host."""
    settings = workload.settings
    if host is not None and system.policy == "squishy" and system.host_packing:
        told = replace(
            settings,
            host_cores=host.cores,
            frontend_ms=host.costs.frontend_ms,
        )
    else:
        told = replace(settings, host_cores=0.0)
    return workload if told == settings else replace(workload, settings=told)


# The fill of a fixed cluster is searched to this relative precision.
FILL_TOLERANCE = 1e-4


def plan_for(
    system: SystemSpec,
    workload: Workload,
    profiles: Mapping[str, Profile],
    cluster_backends: int | None,
    host: HostSpec | None = None,
) -> Plan:
    """The plan ``system`` runs for ``workload`` on a cluster of ``cluster_backends`` (None: unlimited).

    A squishy plan uses as few backends as the load needs. When the load needs more than the cluster has,
    every system plans for the largest share of it that fits (the same rates scaled down, so routing
    weights keep their proportions) and the full load then arrives at those backends: what a deployed
    system on a fixed cluster does (``squishy.control.fitting``, the search the server uses too). The
    batch-oblivious allocation always spreads over the whole cluster. Raises ``DoesNotFit`` when no share
    of the load fits. ``host``: the nodes' host CPU, which a squishy planner packs too.
    """
    workload = planning_workload(system, workload, host)
    planning = planning_profiles(system, profiles)
    if system.policy == "squishy":

        def make(factor: float) -> Plan:
            return make_plan(
                workload.scaled(factor),
                planning,
                policy="squishy",
                prefix_batching=system.prefix_batching,
                query_analysis=system.query_analysis,
            )

        plan = make(1.0)
        if cluster_backends is None or plan.num_backends <= cluster_backends:
            return plan
        return largest_fitting(make, cluster_backends, start=1.0, upper=1.0, relative_tolerance=FILL_TOLERANCE)[1]

    def oblivious(factor: float) -> Plan:
        return make_plan(workload.scaled(factor), planning, policy="batch-oblivious")

    if cluster_backends is None:
        return oblivious(1.0)
    return largest_fitting(oblivious, cluster_backends, start=1.0, upper=None, relative_tolerance=FILL_TOLERANCE)[1]
