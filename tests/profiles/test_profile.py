"""Profiles: the published-format reader, curve cleaning, interpolation and the shipped tables."""

from __future__ import annotations

import itertools

import pytest

from squishy.errors import ProfileError
from squishy.profiles import Profile, clean_curve, reference_profile, reference_profiles


def test_batch_table_allows_only_its_sizes():
    profile = Profile.from_dict({"model": "A", "batch_ms": {"4": 50, "8": 75, "16": 100}})
    assert profile.allowed_batches == (4, 8, 16)
    assert profile.latency_ms(8) == 75
    assert profile.throughput(16) == 160.0
    assert profile.max_batch_within(99.9) == 8
    assert profile.smallest_allowed_at_least(5) == 8
    assert profile.batch_latency_ms(3) == 50  # three inputs ride a batch of 4
    with pytest.raises(ProfileError, match="batch size 5 is not allowed"):
        profile.latency_ms(5)


def test_interpolated_profile_allows_every_size_up_to_the_largest():
    profile = Profile.from_dict({"model": "A", "batch_ms": {"4": 50, "8": 75, "16": 100}, "interpolate": True})
    assert profile.allowed_batches == tuple(range(1, 17))
    assert profile.latency_ms(6) == pytest.approx(62.5)
    assert profile.latency_ms(2) == 50  # below the smallest measured size: no cheaper than it


def test_linear_profile():
    profile = Profile.linear("m", alpha_ms=2.0, beta_ms=5.0, max_batch=8)
    assert profile.allowed_batches == tuple(range(1, 9))
    assert profile.latency_ms(8) == 21.0


def test_cleaning_drops_dominated_sizes_and_makes_latency_non_decreasing():
    cleaned, changes = clean_curve({1: 10.0, 2: 9.0, 4: 16.0, 8: 40.0, 16: 60.0})
    # 8 costs 5 ms/input, worse than 4's 4 ms: dropped. 2 is faster than 1: raised to 10 (running max).
    assert cleaned == {1: 10.0, 2: 10.0, 4: 16.0, 16: 60.0}
    assert len(changes) == 2
    assert changes[0].startswith("dropped batch 8")
    per_input = [v / b for b, v in cleaned.items()]
    assert per_input == sorted(per_input, reverse=True)


def test_published_tables_load_and_record_their_cleaning():
    profiles = reference_profiles("gpu")
    assert len(profiles) == 156
    for profile in profiles:
        latencies = [profile.latency_ms(b) for b in profile.allowed_batches]
        assert latencies == sorted(latencies)
        per_input = [v / b for v, b in zip(latencies, profile.allowed_batches, strict=True)]
        assert all(a >= b - 1e-12 for a, b in itertools.pairwise(per_input))
        assert "DeepLearningExamples" in profile.source
    trt = reference_profile("resnet50", "v100-32gb", "trt-fp16")
    assert 64 not in trt.allowed_batches
    assert any("dropped batch 64" in c for c in trt.changes)


def test_margins_inflate_and_add_standard_deviations():
    profile = Profile.from_dict({"model": "m", "batch_ms": {"1": 10, "2": 12}, "std_ms": {"1": 1, "2": 2}})
    margin = profile.with_margin(inflation=1.5, std_multiplier=1.0)
    assert margin.latency_ms(1) == pytest.approx(16.5)
    assert margin.latency_ms(2) == pytest.approx(21.0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": "m"}, "needs 'batch_ms'"),
        ({"model": "m", "batch_ms": {}}, "'batch_ms' is empty"),
        ({"model": "m", "batch_ms": {"x": 1}}, "not an integer"),
        ({"model": "m", "batch_ms": {"1": -1}}, "negative"),
        ({"model": "m", "batch_ms": {"1": "fast"}}, "not a finite number"),
        ({"batch_ms": {"1": 1}}, "'model' must be a non-empty string"),
    ],
)
def test_malformed_profiles_are_named(data, message):
    with pytest.raises(ProfileError, match=message):
        Profile.from_dict(data)


def test_noise_within_one_percent_keeps_the_larger_batch_and_raises_the_smaller():
    # A nearly linear CPU curve: batch 16 is 0.2% worse per input than batch 8 (noise).
    cleaned, changes = clean_curve({1: 9.06, 8: 68.1, 16: 136.5})
    assert set(cleaned) == {1, 8, 16}
    assert cleaned[16] == 136.5
    assert cleaned[8] == pytest.approx(8 * 136.5 / 16)  # raised to batch 16's per-input latency
    assert any(c.startswith("raised batch 8") for c in changes)
    per_input = [v / b for b, v in cleaned.items()]
    assert per_input == sorted(per_input, reverse=True)
