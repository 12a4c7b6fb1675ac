"""The array form of the session queue makes the same decisions as the per-request form.

Random sequences of chunk pushes (deadlines in any order, with ties), batch formations and expiries
are replayed on ``SessionQueue`` and ``ArraySessionQueue``; every drop and every batch must match."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from squishy.batching import DropPolicy, Item, SessionQueue, early_drop_window
from squishy.batching.queue import ArraySessionQueue, latency_table, lazy_drop_start

operation = st.one_of(
    st.tuples(st.just("push"), st.lists(st.integers(0, 60), min_size=1, max_size=12)),
    st.tuples(st.just("form"), st.integers(0, 60), st.integers(1, 8)),
    st.tuples(st.just("expire"), st.integers(0, 60)),
)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(list(DropPolicy)),
    st.lists(operation, max_size=40),
    st.lists(st.floats(0.5, 9), min_size=8, max_size=8),
)
def test_array_queue_matches_session_queue(drop, operations, increments):
    latencies = np.cumsum(increments)

    def latency_ms(n: int) -> float:
        return float(latencies[n - 1])

    reference = SessionQueue(latency_ms, drop)
    fast = ArraySessionQueue(latency_table(latency_ms, 8), drop)
    tag = 0
    for op in operations:
        if op[0] == "push":
            deadlines = [float(d) for d in op[1]]  # integers: plenty of ties
            tags = np.arange(tag, tag + len(deadlines), dtype=np.int64)
            for deadline, t in zip(deadlines, tags.tolist(), strict=True):
                reference.push(Item(deadline_ms=deadline, arrival_ms=deadline / 2, payload=t))
            fast.push_many(np.array(deadlines), np.array(deadlines) / 2, tags)
            tag += len(deadlines)
        elif op[0] == "form":
            decision = reference.form_batch(float(op[1]), op[2])
            _, dropped, _, arrivals, batch = fast.form_batch(float(op[1]), op[2])
            assert dropped.tolist() == [item.payload for item in decision.dropped]
            assert batch.tolist() == [item.payload for item in decision.batch]
            assert arrivals.tolist() == [item.arrival_ms for item in decision.batch]
        else:
            gone = reference.expire(float(op[1]))
            _, expired = fast.expire(float(op[1]))
            assert sorted(expired.tolist()) == sorted(item.payload for item in gone)
        assert len(fast) == len(reference)
        assert fast.oldest_arrival_ms() == reference.oldest_arrival_ms()
        assert fast.earliest_deadline_ms() == reference.earliest_deadline_ms()
    assert fast.drain()[2].tolist() == [item.payload for item in reference.drain()]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0, 500, allow_nan=False), max_size=60), st.floats(0, 400, allow_nan=False))
def test_vectorized_lazy_drop_matches_the_per_request_form(deadlines, now):
    ordered = sorted(deadlines)
    queue = SessionQueue(lambda n: 1.0, DropPolicy.LAZY)
    for deadline in ordered:
        queue.push(Item(deadline_ms=deadline, arrival_ms=0.0))
    decision = queue.form_batch(now, max_batch=1)
    assert lazy_drop_start(np.array(ordered), now) == len(decision.dropped)


def test_early_drop_window_is_reexported_consistently():
    table = latency_table(lambda n: 10.0 + n, 4)
    assert early_drop_window(np.array([5.0, 20.0, 30.0]), 0.0, 2, table) == 1
