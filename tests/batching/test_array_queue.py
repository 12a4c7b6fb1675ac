"""The array form of the session queue makes the same decisions as the per-request form.

Random sequences of chunk pushes (deadlines in any order, with ties; multi-row and prioritised requests),
admissions, batch formations, sweeps, expiries, removals of requests at risk and slowdown changes are
replayed on ``SessionQueue`` and ``ArraySessionQueue`` over latency tables with plateaus (padded batch
sizes: ℓ is non-decreasing, not strictly increasing); every drop and every batch must match."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from squishy.batching import DropPolicy, Item, SessionQueue, early_drop_window
from squishy.batching.latency import LatencyModel
from squishy.batching.queue import ArrayItems, ArraySessionQueue, latency_table, lazy_drop_start

request = st.tuples(st.integers(0, 60), st.integers(1, 3), st.integers(0, 2))  # deadline, rows, priority
operation = st.one_of(
    st.tuples(st.just("push"), st.lists(request, min_size=1, max_size=12)),
    st.tuples(st.just("admit"), request, st.integers(0, 60)),
    st.tuples(st.just("form"), st.integers(0, 60), st.integers(1, 8)),
    st.tuples(st.just("sweep"), st.integers(0, 60)),
    st.tuples(st.just("expire"), st.integers(0, 60)),
    st.tuples(st.just("slowdown"), st.floats(0.5, 3.0)),
    st.tuples(st.just("at_risk"), st.integers(0, 60), st.integers(1, 8), st.floats(0.0, 20.0), st.floats(0.0, 10.0)),
)


def tags(items: ArrayItems) -> list[int]:
    return items.tags.tolist()


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(list(DropPolicy)),
    st.lists(operation, max_size=40),
    st.lists(st.sampled_from([0.0, 0.0, 0.5, 2.0, 7.0]), min_size=8, max_size=8),  # zeros: plateaus
    st.booleans(),
)
def test_array_queue_matches_session_queue(drop, operations, increments, unit_only):
    latencies = 1.0 + np.cumsum(increments)
    model = LatencyModel(np.concatenate(([0.0], latencies)))
    reference = SessionQueue(model.latency_ms, drop)
    fast = ArraySessionQueue(model, drop)
    tag = 0

    def shape(raw: tuple[int, int, int]) -> tuple[float, int, int]:
        deadline, rows, priority = raw
        return (float(deadline), 1, 0) if unit_only else (float(deadline), rows, priority)

    for op in operations:
        if op[0] == "push":
            chunk = [shape(r) for r in op[1]]
            for deadline, rows, priority in chunk:
                reference.push(Item(deadline, deadline / 2, rows, priority, payload=tag))
                tag += 1
            fast.push_many(
                np.array([c[0] for c in chunk]),
                np.array([c[0] / 2 for c in chunk]),
                np.arange(tag - len(chunk), tag, dtype=np.int64),
                np.array([c[1] for c in chunk]),
                np.array([c[2] for c in chunk]),
            )
        elif op[0] == "admit":
            deadline, rows, priority = shape(op[1])
            now = float(op[2])
            kept = reference.admit(Item(deadline, deadline / 2, rows, priority, payload=tag), now)
            assert fast.admit(deadline, deadline / 2, tag, now, rows, priority) == kept
            tag += 1
        elif op[0] == "form":
            decision = reference.form_batch(float(op[1]), op[2])
            fast_decision = fast.form_batch(float(op[1]), op[2])
            assert tags(fast_decision.dropped) == [item.payload for item in decision.dropped]
            assert tags(fast_decision.batch) == [item.payload for item in decision.batch]
            assert fast_decision.batch.arrivals_ms.tolist() == [item.arrival_ms for item in decision.batch]
            assert fast_decision.batch.inputs == decision.inputs
        elif op[0] == "sweep":
            assert sorted(tags(fast.sweep(float(op[1])))) == sorted(i.payload for i in reference.sweep(float(op[1])))
        elif op[0] == "expire":
            gone = reference.expire(float(op[1]))
            assert sorted(tags(fast.expire(float(op[1])))) == sorted(item.payload for item in gone)
        elif op[0] == "at_risk":
            now, limit, round_ms, guard = float(op[1]), op[2], op[3], op[4]
            gone = reference.take_at_risk(now, limit, round_ms, guard)
            assert sorted(tags(fast.take_at_risk(now, limit, round_ms, guard))) == sorted(i.payload for i in gone)
        else:
            model.slowdown = op[1]
        assert len(fast) == len(reference)
        assert fast.inputs == reference.inputs
        assert fast.oldest_arrival_ms() == reference.oldest_arrival_ms()
        assert fast.earliest_deadline_ms() == reference.earliest_deadline_ms()
    assert tags(fast.drain()) == [item.payload for item in reference.drain()]


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
    assert early_drop_window(np.array([5.0, 20.0, 30.0]), 0.0, 2, table, scale=2.0) == 2  # slower batches


def test_the_slowdown_of_one_session_is_seen_by_every_queue_it_has():
    model = LatencyModel(np.array([0.0, 10.0, 12.0]))
    queues = [ArraySessionQueue(model), ArraySessionQueue(model)]
    model.observe(2, 24.0)  # twice as slow as profiled: the estimate moves 5% of the way
    assert model.slowdown == 1.05
    assert [q.latency_ms(2) for q in queues] == [12.0 * 1.05, 12.0 * 1.05]
