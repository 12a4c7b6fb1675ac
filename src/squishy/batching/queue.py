"""One session's request queue on one backend, and the rule that turns it into batches.

This is the single place where squishy decides which queued requests run together and which are
dropped; the real backends (``squishy.runtime``) and the simulator (``squishy.sim``) both call it. Time
comes in as ``now_ms`` from a clock the caller owns, so the same code runs in tests, in simulation
and in production.

Drop rules (Nexus, Section 6.3):
- ``early``: scan the deadline-ordered queue with a window of up to b inputs; stop at the first request
  whose window can finish in time (now + ℓ(window) ≤ every deadline in it); drop everything before it;
  run that window. Hopeless requests never shrink a batch, so the backend does not fall behind.
- ``lazy``: drop only requests whose deadline has already passed; run the first b of the rest, even if
  they will be late (Clipper's behaviour).
- ``none``: never drop; late replies count as bad (TF-Serving's behaviour).
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from squishy.batching.latency import LatencyModel


class DropPolicy(StrEnum):
    EARLY = "early"
    LAZY = "lazy"
    NONE = "none"


@dataclass(slots=True)
class Item:
    """One queued request as the policy sees it; ``payload`` is the caller's and never inspected."""

    deadline_ms: float
    arrival_ms: float
    size: int = 1  # inputs it carries (a client may send several rows in one request)
    priority: int = 0  # lower runs first; equal for every request unless the model sets priority levels
    payload: Any = None
    sequence: int = 0  # arrival order, to break ties deterministically

    def order_key(self) -> tuple[int, float, int]:
        return (self.priority, self.deadline_ms, self.sequence)


@dataclass(slots=True)
class BatchDecision:
    batch: list[Item] = field(default_factory=list)  # run these together, in this order
    dropped: list[Item] = field(default_factory=list)  # answer these "dropped" now

    @property
    def inputs(self) -> int:
        return sum(item.size for item in self.batch)


LatencyFn = Callable[[int], float]  # inputs in a batch → ms to run it


class SessionQueue:
    """Deadline-ordered (priority first) queue of one session's requests on one backend.

    ``latency_ms(n)`` is the profile's time to run a batch of n inputs (the scheduler's ℓ, padded to an
    allowed size). Not thread-safe: the owner serializes access.
    """

    def __init__(self, latency_ms: LatencyFn, drop: DropPolicy | str = DropPolicy.EARLY) -> None:
        self.latency_ms = latency_ms
        self.drop = DropPolicy(drop)
        self._items: list[Item] = []
        self._keys: list[tuple[int, float, int]] = []
        self._sequence = itertools.count()
        self._inputs = 0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self._items)

    @property
    def inputs(self) -> int:
        """Inputs waiting (Σ size)."""
        return self._inputs

    def oldest_arrival_ms(self) -> float | None:
        return min((item.arrival_ms for item in self._items), default=None)

    def earliest_deadline_ms(self) -> float | None:
        return min((item.deadline_ms for item in self._items), default=None)

    def admit(self, item: Item, now_ms: float) -> bool:
        """Queue ``item`` unless it is hopeless already (it could not finish even if it ran alone now).

        Returns False for a hopeless request, which the caller answers at once; lazy and no-drop
        policies admit everything, as the systems they model do.
        """
        if self.drop is DropPolicy.EARLY and now_ms + self.latency_ms(item.size) > item.deadline_ms:
            return False
        self.push(item)
        return True

    def push(self, item: Item) -> None:
        item.sequence = next(self._sequence)
        key = item.order_key()
        index = bisect.bisect_right(self._keys, key)
        self._keys.insert(index, key)
        self._items.insert(index, item)
        self._inputs += item.size

    def drain(self) -> list[Item]:
        """Remove and return everything queued (a re-plan moves the queue with its session)."""
        items, self._items, self._keys, self._inputs = self._items, [], [], 0
        return items

    def form_batch(self, now_ms: float, max_batch: int) -> BatchDecision:
        """The next batch of at most ``max_batch`` inputs (a single larger request runs alone), and the
        requests dropped to form it. An empty batch means nothing worth running is queued."""
        if self.drop is DropPolicy.EARLY:
            start = self._first_window_in_time(now_ms, max_batch)
        elif self.drop is DropPolicy.LAZY:
            start = self._first_not_expired(now_ms)
        else:
            start = 0
        dropped = self._items[:start]
        end = start + window_length([item.size for item in self._items[start:]], max_batch)
        batch = self._items[start:end]
        del self._items[:end]
        del self._keys[:end]
        self._inputs -= sum(item.size for item in dropped) + sum(item.size for item in batch)
        return BatchDecision(batch=batch, dropped=dropped)

    def expire(self, now_ms: float) -> list[Item]:
        """Drop requests whose deadline has passed, without forming a batch (lazy and early policies)."""
        if self.drop is DropPolicy.NONE:
            return []
        return self._remove(lambda item: item.deadline_ms < now_ms)

    def sweep(self, now_ms: float) -> list[Item]:
        """Drop what this policy already knows it will drop, so the client hears at once.

        Early drop: requests that could not finish even alone if started now (deadline < now + ℓ(size)).
        Every later batch window holding them starts later and is no shorter, so ``form_batch`` would
        drop them anyway: sweeping changes when the drop is answered, never which requests are dropped.
        Lazy drop: requests already past their deadline. No drop: nothing.
        """
        if self.drop is DropPolicy.EARLY:
            return self._remove(lambda item: item.deadline_ms < now_ms + self.latency_ms(item.size))
        return self.expire(now_ms)

    def take_at_risk(self, now_ms: float, max_batch: int, round_ms: float, guard_ms: float) -> list[Item]:
        """Remove and return the requests that, served from here in order (``max_batch`` inputs a turn, one
        turn every ``round_ms``), would finish later than ``guard_ms`` before their deadline."""
        flags = at_risk([item.size for item in self._items], [item.deadline_ms for item in self._items],
                        now_ms, max_batch, round_ms, guard_ms, self.latency_ms)  # fmt: skip
        if not any(flags):
            return []
        doomed = {id(item) for item, flag in zip(self._items, flags, strict=True) if flag}
        return self._remove(lambda item: id(item) in doomed)

    def adopt(self, items: list[Item], now_ms: float) -> tuple[list[Item], list[Item]]:
        """Queue requests another variant's queue gave up (``take_at_risk``); returns (queued, hopeless)."""
        queued, hopeless = [], []
        for item in items:
            (queued if self.admit(item, now_ms) else hopeless).append(item)
        return queued, hopeless

    def _remove(self, doomed: Callable[[Item], bool]) -> list[Item]:
        gone = [item for item in self._items if doomed(item)]
        if gone:
            self._items = [item for item in self._items if not doomed(item)]
            self._keys = [item.order_key() for item in self._items]
            self._inputs = sum(item.size for item in self._items)
        return gone

    # --------------------------------------------------------------------------------- the rules
    def _first_window_in_time(self, now_ms: float, max_batch: int) -> int:
        items = self._items
        return first_window_in_time(
            [item.size for item in items], [item.deadline_ms for item in items], now_ms, max_batch, self.latency_ms
        )

    def _first_not_expired(self, now_ms: float) -> int:
        """Lazy drop on a deadline-ordered queue: everything before the first live request has expired."""
        for index, item in enumerate(self._items):
            if item.deadline_ms >= now_ms:
                return index
        return len(self._items)


def first_window_in_time(
    sizes: Sequence[int], deadlines_ms: Sequence[float], now_ms: float, max_batch: int, latency_ms: LatencyFn
) -> int:
    """Early drop: the index of the first request whose window can finish in time (len if none can).

    Two pointers over the queue: the window [start, end) holds up to ``max_batch`` inputs (at least its
    first request), and a monotonic deque tracks its earliest deadline (the head's, unless priorities
    reorder the queue). A window is in time when now + ℓ(its inputs) ≤ every deadline in it.
    """
    count = len(sizes)
    end = 0
    inputs = 0
    earliest: deque[int] = deque()  # indices in the window with increasing deadlines
    for start in range(count):
        if end == start:  # a window always holds at least its first request
            inputs += sizes[end]
            earliest.append(end)
            end += 1
        while end < count and inputs + sizes[end] <= max_batch:
            deadline = deadlines_ms[end]
            while earliest and deadlines_ms[earliest[-1]] >= deadline:
                earliest.pop()
            earliest.append(end)
            inputs += sizes[end]
            end += 1
        if now_ms + latency_ms(inputs) <= deadlines_ms[earliest[0]]:
            return start
        inputs -= sizes[start]
        if earliest[0] == start:
            earliest.popleft()
    return count


def at_risk(
    sizes: Sequence[int],
    deadlines_ms: Sequence[float],
    now_ms: float,
    max_batch: int,
    round_ms: float,
    guard_ms: float,
    latency_ms: LatencyFn,
) -> list[bool]:
    """Per queued request (in queue order), whether it would finish later than ``guard_ms`` before its
    deadline if the queue were served as it stands: windows of ``max_batch`` inputs from the head, one
    per turn of the backend, a turn every ``round_ms`` (the other sessions' batches in between)."""
    flags = []
    start = 0
    turn = 0
    count = len(sizes)
    while start < count:
        length = window_length(list(sizes[start : start + max_batch]), max_batch)
        inputs = sum(sizes[start : start + length])
        finish_ms = now_ms + turn * round_ms + latency_ms(inputs)
        flags.extend(finish_ms > deadlines_ms[i] - guard_ms for i in range(start, start + length))
        start += length
        turn += 1
    return flags


def window_length(sizes: list[int], max_batch: int) -> int:
    """How many requests from the head fit in one batch of at most ``max_batch`` inputs (at least one)."""
    total = 0
    for count, size in enumerate(sizes):
        if total + size > max_batch:
            return max(count, 1)
        total += size
    return len(sizes)


# ----------------------------------------------------------------------------- vectorized form
def early_drop_window(
    deadlines_ms: np.ndarray, now_ms: float, max_batch: int, latency_table_ms: np.ndarray, scale: float = 1.0
) -> int:
    """The early-drop decision for a queue of unit-size requests with ascending deadlines.

    Returns the index of the first request kept; the batch is ``[start, start + max_batch)``. Same
    decision as ``first_window_in_time`` (a property test checks it), in O(log n): with ascending
    deadlines, and windows that only shrink near the tail, whether a window starting at i is in time
    is monotone in i, so a binary search finds the first one. ``latency_table_ms[n] * scale`` is ℓ for a
    batch of n inputs (index 0 unused; ``scale`` is the observed slowdown).
    """
    count = len(deadlines_ms)
    full_latency = float(latency_table_ms[max_batch]) * scale
    # Windows starting before count - max_batch are full: in time iff deadline ≥ now + ℓ(max_batch).
    full_windows = max(count - max_batch, 0)
    first = int(np.searchsorted(deadlines_ms[:full_windows], now_ms + full_latency, side="left"))
    if first < full_windows:
        return first
    # The tail windows shrink: in time iff deadline[i] ≥ now + ℓ(count - i). Both sides are monotone.
    low, high = full_windows, count
    while low < high:
        middle = (low + high) // 2
        if deadlines_ms[middle] >= now_ms + float(latency_table_ms[count - middle]) * scale:
            high = middle
        else:
            low = middle + 1
    return low


def latency_table(latency_ms: LatencyFn, max_inputs: int) -> np.ndarray:
    """ℓ(n) for n = 0..max_inputs as an array (index 0 is 0), for ``early_drop_window``."""
    return np.array([0.0] + [latency_ms(n) for n in range(1, max_inputs + 1)])


def lazy_drop_start(deadlines_ms: np.ndarray, now_ms: float) -> int:
    """The lazy-drop decision for a queue with ascending deadlines: the index of the first request that
    has not expired (deadline ≥ now). Same decision as ``SessionQueue.form_batch`` with
    ``DropPolicy.LAZY`` (and as ``expire``), in O(log n)."""
    return int(np.searchsorted(deadlines_ms, now_ms, side="left"))


_EMPTY_F = np.empty(0)
_EMPTY_I = np.empty(0, dtype=np.int64)


@dataclass(slots=True)
class ArrayItems:
    """Requests as arrays, in queue order. ``sizes``/``priorities`` of None mean all 1 / all 0."""

    deadlines_ms: np.ndarray
    arrivals_ms: np.ndarray
    tags: np.ndarray  # the caller's int64 payload per request, never inspected
    sizes: np.ndarray | None = None
    priorities: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.tags)

    @property
    def inputs(self) -> int:
        return len(self.tags) if self.sizes is None else int(self.sizes.sum())

    @classmethod
    def empty(cls) -> ArrayItems:
        return cls(_EMPTY_F, _EMPTY_F, _EMPTY_I)


# Shared by the fast paths that drop nothing; its arrays are empty, so no caller can change it.
_NO_ITEMS = ArrayItems.empty()


@dataclass(slots=True)
class ArrayDecision:
    batch: ArrayItems  # run these together, in this order
    dropped: ArrayItems  # answer these "dropped" now


class ArraySessionQueue:
    """``SessionQueue`` held in numpy arrays, for callers that move requests in bulk (the simulator).

    Same decisions as ``SessionQueue`` (a property test replays random push / admit / form_batch /
    sweep / expire sequences on both, with multi-row and prioritised requests): ordered by (priority,
    deadline, push order), windows of at most ``max_batch`` inputs, early/lazy/no drop. Requests of one
    size and one priority level (the common case) take an O(log n) path per decision; others take the
    same two-pointer rule as ``SessionQueue`` over the arrays.

    ``latency`` gives ℓ(n) and the observed slowdown, shared with the session's other queues.
    """

    def __init__(self, latency: LatencyModel, drop: DropPolicy | str = DropPolicy.EARLY) -> None:
        self.latency = latency
        self.drop = DropPolicy(drop)
        self._deadlines = _EMPTY_F
        self._arrivals = _EMPTY_F
        self._tags = _EMPTY_I
        self._sizes: np.ndarray | None = None  # None: every request carries one input
        self._priorities: np.ndarray | None = None  # None: every request at level 0
        self._head = 0  # items before it have left the queue; compacted on the next push
        self._inputs = 0

    def __len__(self) -> int:
        return len(self._deadlines) - self._head

    @property
    def inputs(self) -> int:
        return self._inputs

    def latency_ms(self, inputs: int) -> float:
        return self.latency.latency_ms(inputs)

    def oldest_arrival_ms(self) -> float | None:
        if len(self) == 0:
            return None
        return float(self._arrivals[self._head :].min())

    def earliest_deadline_ms(self) -> float | None:
        if len(self) == 0:
            return None
        if self._priorities is None:
            return float(self._deadlines[self._head])
        return float(self._deadlines[self._head :].min())

    @property
    def deadlines_ms(self) -> np.ndarray:
        """Queued deadlines in queue order (a read-only view)."""
        return self._deadlines[self._head :]

    # ------------------------------------------------------------------------------------ adding
    def push_many(
        self,
        deadlines_ms: np.ndarray,
        arrivals_ms: np.ndarray,
        tags: np.ndarray,
        sizes: np.ndarray | None = None,
        priorities: np.ndarray | None = None,
    ) -> None:
        """Queue a chunk of requests (in any order): the queue stays in (priority, deadline, push order)."""
        count = len(deadlines_ms)
        if count == 0:
            return
        if sizes is not None and bool((sizes == 1).all()):
            sizes = None
        if priorities is not None and not priorities.any():
            priorities = None
        self._inputs += count if sizes is None else int(sizes.sum())
        head = self._head
        unit = self._sizes is None and self._priorities is None and sizes is None and priorities is None
        if unit and head == len(self._deadlines) and (count < 2 or bool((deadlines_ms[1:] >= deadlines_ms[:-1]).all())):
            # An empty queue takes a sorted chunk as it is (the common case in bulk callers).
            self._deadlines, self._arrivals, self._tags, self._head = deadlines_ms, arrivals_ms, tags, 0
            return
        old = self._deadlines[head:]
        deadlines = np.concatenate((old, deadlines_ms))
        arrivals = np.concatenate((self._arrivals[head:], arrivals_ms))
        tags = np.concatenate((self._tags[head:], tags))
        new_sizes = self._merge_column(self._sizes, sizes, len(old), count, 1)
        new_priorities = self._merge_column(self._priorities, priorities, len(old), count, 0)
        if new_priorities is None:
            in_order = (len(old) == 0 or deadlines_ms[0] >= old[-1]) and (
                count < 2 or bool((deadlines_ms[1:] >= deadlines_ms[:-1]).all())
            )
            order = None if in_order else np.argsort(deadlines, kind="stable")  # stable: ties keep push order
        else:
            order = np.lexsort((deadlines, new_priorities))  # lexsort is stable: ties keep push order
        if order is not None:
            deadlines, arrivals, tags = deadlines[order], arrivals[order], tags[order]
            new_sizes = None if new_sizes is None else new_sizes[order]
            new_priorities = None if new_priorities is None else new_priorities[order]
        self._deadlines, self._arrivals, self._tags, self._head = deadlines, arrivals, tags, 0
        self._sizes, self._priorities = new_sizes, new_priorities

    def _merge_column(
        self, current: np.ndarray | None, added: np.ndarray | None, old_count: int, count: int, default: int
    ) -> np.ndarray | None:
        if current is None and added is None:
            return None
        old = current[self._head :] if current is not None else np.full(old_count, default, dtype=np.int64)
        new = added.astype(np.int64) if added is not None else np.full(count, default, dtype=np.int64)
        return np.concatenate((old, new))

    def admit(
        self, deadline_ms: float, arrival_ms: float, tag: int, now_ms: float, size: int = 1, priority: int = 0
    ) -> bool:
        """``SessionQueue.admit``: queue one request unless it could not finish even if it ran alone now."""
        if self.drop is DropPolicy.EARLY and now_ms + self.latency.latency_ms(size) > deadline_ms:
            return False
        self.push_many(
            np.array([deadline_ms]),
            np.array([arrival_ms]),
            np.array([tag], dtype=np.int64),
            None if size == 1 else np.array([size], dtype=np.int64),
            None if priority == 0 else np.array([priority], dtype=np.int64),
        )
        return True

    # ---------------------------------------------------------------------------------- deciding
    def form_batch(self, now_ms: float, max_batch: int) -> ArrayDecision:
        """The next batch of at most ``max_batch`` inputs (a single larger request runs alone) and the
        requests dropped to form it."""
        head = self._head
        queued = self._deadlines[head:]
        count = len(queued)
        if count == 0:
            empty = ArrayItems.empty()
            return ArrayDecision(empty, empty)
        sizes = None if self._sizes is None else self._sizes[head:]
        if self.drop is DropPolicy.EARLY:
            if sizes is None and self._priorities is None:
                start = early_drop_window(queued, now_ms, max_batch, self.latency.table_ms, self.latency.slowdown)
            else:
                size_list = [1] * count if sizes is None else sizes.tolist()
                start = first_window_in_time(size_list, queued.tolist(), now_ms, max_batch, self.latency.latency_ms)
        elif self.drop is DropPolicy.LAZY:
            if self._priorities is None:
                start = int(queued.searchsorted(now_ms, side="left"))  # lazy_drop_start, without the wrapper
            else:
                live = np.flatnonzero(queued >= now_ms)
                start = int(live[0]) if len(live) else count
        else:
            start = 0
        if sizes is None:
            end = min(count, start + max_batch)
        else:
            end = start + window_length(sizes[start:].tolist(), max_batch) if start < count else count
        cut, last = head + start, head + end
        self._head = last
        dropped = self._slice(head, cut) if start else _NO_ITEMS
        batch = self._slice(cut, last)
        self._inputs -= dropped.inputs + batch.inputs
        return ArrayDecision(batch, dropped)

    def sweep(self, now_ms: float) -> ArrayItems:
        """``SessionQueue.sweep``: drop what this policy already knows it will drop, so the client hears at
        once (early: could not finish even alone if started now; lazy: expired; none: nothing)."""
        if self.drop is DropPolicy.NONE or len(self) == 0:
            return _NO_ITEMS
        if self.drop is DropPolicy.LAZY:
            return self.expire(now_ms)
        head = self._head
        if self._sizes is None and self._priorities is None:
            hopeless_before = now_ms + self.latency.latency_ms(1)
            if self._deadlines[head] >= hopeless_before:
                return _NO_ITEMS  # the earliest deadline still allows a batch of one: nothing to drop
            cut = int(self._deadlines[head:].searchsorted(hopeless_before, side="left"))
            return self._take_prefix(cut)
        deadlines = self._deadlines[head:]
        sizes = np.ones(len(deadlines), dtype=np.int64) if self._sizes is None else self._sizes[head:]
        return self._remove(deadlines < now_ms + self.latency.latencies_ms(sizes))

    def expire(self, now_ms: float) -> ArrayItems:
        """Drop requests whose deadline has passed (lazy and early policies)."""
        if self.drop is DropPolicy.NONE or len(self) == 0:
            return _NO_ITEMS
        deadlines = self._deadlines[self._head :]
        if self._priorities is None:
            return self._take_prefix(lazy_drop_start(deadlines, now_ms))
        return self._remove(deadlines < now_ms)

    def take_at_risk(self, now_ms: float, max_batch: int, round_ms: float, guard_ms: float) -> ArrayItems:
        """``SessionQueue.take_at_risk``."""
        if len(self) == 0:
            return _NO_ITEMS
        head = self._head
        deadlines = self._deadlines[head:]
        if self._sizes is None:
            turns = np.arange(len(deadlines)) // max_batch
            inputs = np.minimum(max_batch, len(deadlines) - turns * max_batch)
            finish = now_ms + turns * round_ms + self.latency.latencies_ms(inputs)
            return self._remove(finish > deadlines - guard_ms)
        flags = at_risk(self._sizes[head:].tolist(), deadlines.tolist(), now_ms, max_batch, round_ms, guard_ms,
                        self.latency.latency_ms)  # fmt: skip
        return self._remove(np.array(flags, dtype=bool))

    def adopt(self, items: ArrayItems, now_ms: float) -> tuple[ArrayItems, ArrayItems]:
        """``SessionQueue.adopt``: queue what can still finish alone here; returns (queued, hopeless)."""
        if len(items) == 0:
            return items, items
        sizes = np.ones(len(items), dtype=np.int64) if items.sizes is None else items.sizes
        if self.drop is DropPolicy.EARLY:
            fits = now_ms + self.latency.latencies_ms(sizes) <= items.deadlines_ms
        else:
            fits = np.ones(len(items), dtype=bool)
        queued, hopeless = _select(items, fits), _select(items, ~fits)
        self.push_many(queued.deadlines_ms, queued.arrivals_ms, queued.tags, queued.sizes, queued.priorities)
        return queued, hopeless

    def drain(self) -> ArrayItems:
        """Remove and return everything queued (a re-plan moves the queue with its session)."""
        out = self._slice(self._head, len(self._deadlines))
        self._deadlines, self._arrivals, self._tags, self._head = _EMPTY_F, _EMPTY_F, _EMPTY_I, 0
        self._sizes = self._priorities = None
        self._inputs = 0
        return out

    # ---------------------------------------------------------------------------------- internals
    def _slice(self, start: int, stop: int) -> ArrayItems:
        return ArrayItems(
            self._deadlines[start:stop],
            self._arrivals[start:stop],
            self._tags[start:stop],
            None if self._sizes is None else self._sizes[start:stop],
            None if self._priorities is None else self._priorities[start:stop],
        )

    def _take_prefix(self, count: int) -> ArrayItems:
        head = self._head
        out = self._slice(head, head + count)
        self._head = head + count
        self._inputs -= out.inputs
        return out

    def _remove(self, doomed: np.ndarray) -> ArrayItems:
        """Remove the queued requests where ``doomed`` (over the live part) is True; the rest keep order."""
        if not doomed.any():
            return _NO_ITEMS
        head = self._head
        keep = ~doomed
        columns = [self._deadlines, self._arrivals, self._tags, self._sizes, self._priorities]
        live = [None if c is None else c[head:] for c in columns]
        gone = ArrayItems(*(None if c is None else c[doomed] for c in live))
        kept = [None if c is None else c[keep] for c in live]
        self._deadlines, self._arrivals, self._tags, self._sizes, self._priorities = kept  # type: ignore[assignment]
        self._head = 0
        self._inputs -= gone.inputs
        return gone


def _select(items: ArrayItems, mask: np.ndarray) -> ArrayItems:
    return ArrayItems(
        items.deadlines_ms[mask],
        items.arrivals_ms[mask],
        items.tags[mask],
        None if items.sizes is None else items.sizes[mask],
        None if items.priorities is None else items.priorities[mask],
    )
