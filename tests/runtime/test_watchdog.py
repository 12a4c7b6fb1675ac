"""The watchdog's rules on a hand-driven clock: when a running batch's requests are answered, and when a
slot counts as stuck (the end-to-end behaviour is in tests/e2e/test_faults.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import SimpleNamespace

from squishy.batching import Item
from squishy.batching.turn import Slot
from squishy.runtime.backend import RunningBatch
from squishy.runtime.watchdog import HangBound, HangSink, Watchdog


class Recorder(HangSink):
    def __init__(self) -> None:
        self.overdue_items: list[Item] = []
        self.hangs: list[tuple[int, float, float]] = []

    def overdue(self, batch: RunningBatch, items: Sequence[Item]) -> None:
        self.overdue_items.extend(item for item in items if item not in self.overdue_items)

    def hung(self, worker, batch: RunningBatch, ran_ms: float, bound_ms: float) -> None:  # type: ignore[no-untyped-def]
        self.hangs.append((worker.index, ran_ms, bound_ms))
        worker.abandoned = True


def running(started_ms: float, expected_ms: float, deadlines: Sequence[float]) -> RunningBatch:
    items = [Item(deadline_ms=d, arrival_ms=0.0, size=1, priority=0, payload=None) for d in deadlines]
    return RunningBatch(Slot("m:1", queue=None, batch=8), items, executor=None, started_ms=started_ms,  # type: ignore[arg-type]
                        expected_ms=expected_ms)  # fmt: skip


def watchdog(workers: list[SimpleNamespace], sink: Recorder, **kwargs: object) -> Watchdog:
    return Watchdog(lambda: workers, sink, bound=HangBound(hang_factor=10, hang_floor_ms=100), **kwargs)  # type: ignore[arg-type]


def test_requests_are_answered_at_their_deadline_not_before() -> None:
    batch = running(started_ms=0.0, expected_ms=5.0, deadlines=[20.0, 30.0])
    worker = SimpleNamespace(index=0, running=batch, abandoned=False)
    sink = Recorder()
    dog = watchdog([worker], sink)
    assert dog.check(10.0) == 20.0 and sink.overdue_items == []  # next look: the first deadline
    assert dog.check(20.0) == 30.0 and sink.overdue_items == [batch.items[0]]
    assert dog.check(30.0) == 100.0 and sink.overdue_items == list(batch.items)  # then the hang bound
    assert sink.hangs == []


def test_a_batch_far_past_its_profile_is_stuck_and_reported_once() -> None:
    batch = running(started_ms=0.0, expected_ms=50.0, deadlines=[1e9])
    worker = SimpleNamespace(index=1, running=batch, abandoned=False)
    sink = Recorder()
    dog = watchdog([worker], sink)
    assert dog.check(499.0) == 500.0  # 10 x 50 ms, above the 100 ms floor
    assert sink.hangs == []
    dog.check(500.0)
    dog.check(900.0)
    assert sink.hangs == [(1, 500.0, 500.0)]


def test_a_short_profile_is_never_stuck_before_the_floor() -> None:
    batch = running(started_ms=0.0, expected_ms=1.0, deadlines=[1e9])
    sink = Recorder()
    dog = watchdog([SimpleNamespace(index=0, running=batch, abandoned=False)], sink)
    dog.check(99.0)
    assert sink.hangs == []
    dog.check(100.0)
    assert len(sink.hangs) == 1


def test_late_replies_when_asked_for_and_idle_slots_need_no_look() -> None:
    batch = running(started_ms=0.0, expected_ms=5.0, deadlines=[20.0])
    sink = Recorder()
    dog = watchdog([SimpleNamespace(index=0, running=batch, abandoned=False)], sink, answer_at_deadline=False)
    assert dog.check(50.0) == 100.0 and sink.overdue_items == []
    assert watchdog([SimpleNamespace(index=0, running=None, abandoned=False)], sink).check(5.0) == math.inf
