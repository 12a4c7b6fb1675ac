"""The batching policy: early/lazy/no drop worked out by hand, and the vectorized form against the
per-request form on random queues."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from squishy.batching import (
    ClipperDispatch,
    DropPolicy,
    Item,
    SessionQueue,
    TfServingDispatch,
    early_drop_window,
    latency_table,
)


def linear(n: int) -> float:
    return 10.0 + 2.0 * n  # ℓ(1) = 12, ℓ(4) = 18 ms


def queue_of(deadlines: list[float], drop: DropPolicy, sizes: list[int] | None = None) -> SessionQueue:
    queue = SessionQueue(linear, drop)
    for i, deadline in enumerate(deadlines):
        queue.push(Item(deadline_ms=deadline, arrival_ms=0.0, size=(sizes or [1] * len(deadlines))[i], payload=i))
    return queue


def test_early_drop_skips_hopeless_requests_and_keeps_the_batch_full():
    # At t = 100 with batch 4 (ℓ = 18 ms): deadlines 105 and 110 cannot make any batch that includes them;
    # the window starting at the deadline-117 request (117 < 118) fails too; 119 works.
    queue = queue_of([105, 110, 117, 119, 130, 140, 150, 160], DropPolicy.EARLY)
    decision = queue.form_batch(now_ms=100.0, max_batch=4)
    assert [item.payload for item in decision.dropped] == [0, 1, 2]
    assert [item.payload for item in decision.batch] == [3, 4, 5, 6]
    assert [item.payload for item in queue] == [7]


def test_early_drop_window_shrinks_at_the_tail():
    # Two requests left: their window is 2 inputs (ℓ = 14 ms), so a deadline of 115 is in time at t = 100.
    queue = queue_of([101, 115, 200], DropPolicy.EARLY)
    decision = queue.form_batch(now_ms=100.0, max_batch=4)
    assert [item.payload for item in decision.dropped] == [0]
    assert [item.payload for item in decision.batch] == [1, 2]


def test_lazy_drop_only_drops_expired_requests():
    queue = queue_of([95, 105, 110, 117, 119], DropPolicy.LAZY)
    decision = queue.form_batch(now_ms=100.0, max_batch=4)
    assert [item.payload for item in decision.dropped] == [0]
    assert [item.payload for item in decision.batch] == [1, 2, 3, 4]  # 105 and 110 will be late


def test_no_drop_runs_everything_in_order():
    queue = queue_of([50, 60, 70], DropPolicy.NONE)
    decision = queue.form_batch(now_ms=100.0, max_batch=2)
    assert decision.dropped == []
    assert [item.payload for item in decision.batch] == [0, 1]


def test_multi_input_requests_fill_the_batch_by_inputs():
    queue = queue_of([200, 201, 202, 203], DropPolicy.EARLY, sizes=[3, 2, 1, 4])
    decision = queue.form_batch(now_ms=100.0, max_batch=6)
    assert [item.payload for item in decision.batch] == [0, 1, 2]
    assert decision.inputs == 6
    oversized = queue_of([200], DropPolicy.EARLY, sizes=[8])
    assert oversized.form_batch(now_ms=100.0, max_batch=4).inputs == 8  # a larger request runs alone


def test_deadline_order_and_priority_levels():
    queue = SessionQueue(linear, DropPolicy.EARLY)
    queue.push(Item(deadline_ms=300, arrival_ms=0, payload="late-deadline"))
    queue.push(Item(deadline_ms=200, arrival_ms=1, payload="early-deadline"))
    queue.push(Item(deadline_ms=400, arrival_ms=2, priority=-1, payload="urgent"))
    decision = queue.form_batch(now_ms=0.0, max_batch=2)
    assert [item.payload for item in decision.batch] == ["urgent", "early-deadline"]


def test_admit_rejects_a_request_that_cannot_finish_even_alone():
    queue = SessionQueue(linear, DropPolicy.EARLY)
    assert not queue.admit(Item(deadline_ms=111.0, arrival_ms=100.0), now_ms=100.0)  # ℓ(1) = 12 ms
    assert queue.admit(Item(deadline_ms=112.0, arrival_ms=100.0), now_ms=100.0)
    assert len(queue) == 1
    lazy = SessionQueue(linear, DropPolicy.LAZY)
    assert lazy.admit(Item(deadline_ms=50.0, arrival_ms=100.0), now_ms=100.0)


def test_expire_and_drain():
    queue = queue_of([90, 100, 120], DropPolicy.EARLY)
    assert [item.payload for item in queue.expire(now_ms=95.0)] == [0]
    assert [item.payload for item in queue.drain()] == [1, 2]
    assert len(queue) == 0 and queue.inputs == 0


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.floats(0, 500, allow_nan=False), max_size=60),
    st.floats(0, 400, allow_nan=False),
    st.integers(1, 16),
    st.lists(st.floats(0.1, 30), min_size=16, max_size=16),
)
def test_vectorized_early_drop_matches_the_per_request_form(deadlines, now, max_batch, increments):
    latencies = np.cumsum(increments)  # any non-decreasing ℓ(n)

    def latency_ms(n: int) -> float:
        return float(latencies[n - 1])

    ordered = sorted(deadlines)
    queue = SessionQueue(latency_ms, DropPolicy.EARLY)
    for deadline in ordered:
        queue.push(Item(deadline_ms=deadline, arrival_ms=0.0))
    decision = queue.form_batch(now, max_batch)
    start = early_drop_window(np.array(ordered), now, max_batch, latency_table(latency_ms, 16))
    assert start == len(decision.dropped)
    assert min(max_batch, len(ordered) - start) == len(decision.batch)


def test_clipper_aimd_and_tf_serving_timeout():
    aimd = ClipperDispatch(max_batch=8)
    assert aimd.batch_limit(32) == 1
    for _ in range(3):
        aimd.observe(1, batch_latency_ms=10, slo_ms=50)
    assert aimd.batch_limit(32) == 4
    aimd.observe(4, batch_latency_ms=60, slo_ms=50)
    assert aimd.batch_limit(32) == 3  # 4 × 0.9 = 3.6
    tf = TfServingDispatch(batch=4, timeout_ms=20)
    queue = queue_of([500, 500], DropPolicy.NONE)
    assert not tf.ready(queue, now_ms=10.0, planned_batch=4)
    assert tf.wake_at(queue, now_ms=10.0, planned_batch=4) == 20.0
    assert tf.ready(queue, now_ms=20.0, planned_batch=4)


def test_sweep_answers_hopeless_requests_early_without_changing_what_is_dropped():
    deadlines = [105, 111, 113, 130, 160]
    swept = queue_of(deadlines, DropPolicy.EARLY)
    gone = swept.sweep(now_ms=100.0)  # ℓ(1) = 12: deadlines before 112 cannot make it even alone
    assert [item.payload for item in gone] == [0, 1]
    plain = queue_of(deadlines, DropPolicy.EARLY)
    later_swept = swept.form_batch(now_ms=101.0, max_batch=4)
    later_plain = plain.form_batch(now_ms=101.0, max_batch=4)
    assert [i.payload for i in later_plain.dropped] == [0, 1] + [i.payload for i in later_swept.dropped]
    assert [i.payload for i in later_plain.batch] == [i.payload for i in later_swept.batch]
    lazy = queue_of(deadlines, DropPolicy.LAZY)
    assert [item.payload for item in lazy.sweep(now_ms=112.0)] == [0, 1]
    assert queue_of(deadlines, DropPolicy.NONE).sweep(now_ms=500.0) == []
