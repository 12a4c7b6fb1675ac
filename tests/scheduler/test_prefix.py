"""Prefix batching: models sharing a trunk pack as one session with per-variant suffix costs."""

from __future__ import annotations

import pytest

from squishy.profiles import Profile
from squishy.scheduler import PrefixGroup, Session, Workload, make_plan
from squishy.scheduler.demand import build_demands, head_key

from .invariants import violations

BATCHES = (1, 2, 4, 8, 16, 32, 64)


def catalog() -> dict[str, Profile]:
    # A trunk with a large fixed cost per batch, and three heads that add a little each.
    trunk = {str(b): 6.0 + 0.9 * b for b in BATCHES}
    out = {"trunk": Profile.from_dict({"model": "trunk", "batch_ms": trunk, "memory_mb": {"1": 100, "64": 300}})}
    for name in ("icon_a", "icon_b", "icon_c"):
        full = {str(b): 6.0 + 0.9 * b + 0.5 + 0.05 * b for b in BATCHES}
        out[name] = Profile.from_dict({"model": name, "batch_ms": full, "memory_mb": {"1": 105, "64": 310}})
    return out


def workload(groups: bool) -> Workload:
    sessions = (Session("icon_a", 50, 300), Session("icon_b", 50, 150), Session("icon_c", 60, 80))
    prefix = (PrefixGroup("trunk", ("icon_a", "icon_b", "icon_c")),) if groups else ()
    return Workload(sessions=sessions, prefix_groups=prefix)


def test_prefix_group_is_one_session_with_its_members_rates():
    plan = make_plan(workload(True), catalog())
    assert {a.model for _, a in plan.allocations()} == {"trunk"}
    members: dict[str, float] = {}
    for _, allocation in plan.allocations():
        assert allocation.slo_ms == 50  # the tightest member SLO
        for member in allocation.members:
            members[member.model] = members.get(member.model, 0.0) + member.rate
    assert members == pytest.approx({"icon_a": 300.0, "icon_b": 150.0, "icon_c": 80.0})
    routes = plan.routes("icon_b")
    assert sum(rate for *_, rate in routes) == pytest.approx(150.0)
    demands, _, _ = build_demands(workload(True), catalog())
    assert violations(plan, demands, None) == []


def test_prefix_batching_needs_fewer_backends():
    shared = make_plan(workload(True), catalog())
    separate = make_plan(workload(True), catalog(), prefix_batching=False)
    assert {a.model for _, a in separate.allocations()} == {"icon_a", "icon_b", "icon_c"}
    assert shared.num_backends < separate.num_backends


def test_group_profile_charges_each_suffix_on_its_slice():
    demands, _, _ = build_demands(workload(True), catalog())
    (group,) = demands
    # Batch 64 of the group: the trunk runs 64 inputs; each head runs its rate-proportional share
    # (37, 19 and 10 inputs), padded to the head's next allowed batch size (64, 32 and 16).
    padded = (64, 32, 16)
    expected = (6.0 + 0.9 * 64) + sum(0.5 + 0.05 * s for s in padded)
    assert group.profile.latency_ms(64) == pytest.approx(expected)


def test_a_measured_head_is_charged_rather_than_the_difference_of_two_noisy_profiles():
    """Whole models measured as the trunk plus noise (some below it, some above): the difference would
    charge each head the noise; a head's own profile, where given, is what the group pays."""
    profiles = catalog()
    noise = {"icon_a": 3.0, "icon_b": -2.0, "icon_c": 4.0}
    for name, extra in noise.items():
        noisy = {str(b): 6.0 + 0.9 * b + extra for b in BATCHES}
        profiles[name] = Profile.from_dict({"model": name, "batch_ms": noisy})
    demands, _, _ = build_demands(workload(True), profiles)
    assert demands[0].profile.latency_ms(1) == pytest.approx(6.9 + 3.0 + 0.0 + 4.0)  # noise above the trunk
    for name in noise:
        head = {str(b): 0.5 + 0.05 * b for b in BATCHES}
        profiles[head_key(name)] = Profile.from_dict({"model": head_key(name), "batch_ms": head})
    demands, _, _ = build_demands(workload(True), profiles)
    assert demands[0].profile.latency_ms(1) == pytest.approx(6.9 + 3 * 0.55)
