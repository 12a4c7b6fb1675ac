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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np


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

    def _remove(self, doomed: Callable[[Item], bool]) -> list[Item]:
        gone = [item for item in self._items if doomed(item)]
        if gone:
            self._items = [item for item in self._items if not doomed(item)]
            self._keys = [item.order_key() for item in self._items]
            self._inputs = sum(item.size for item in self._items)
        return gone

    # --------------------------------------------------------------------------------- the rules
    def _first_window_in_time(self, now_ms: float, max_batch: int) -> int:
        """Index of the first request whose window can finish in time (len(queue) if none can).

        Two pointers over the queue: the window [start, end) holds up to ``max_batch`` inputs, and a
        monotonic deque tracks its earliest deadline (the head's, unless priorities reorder the queue).
        """
        items = self._items
        count = len(items)
        end = 0
        inputs = 0
        earliest: deque[int] = deque()  # indices in the window with increasing deadlines
        for start in range(count):
            if end == start:  # a window always holds at least its first request
                inputs += items[end].size
                earliest.append(end)
                end += 1
            while end < count and inputs + items[end].size <= max_batch:
                deadline = items[end].deadline_ms
                while earliest and items[earliest[-1]].deadline_ms >= deadline:
                    earliest.pop()
                earliest.append(end)
                inputs += items[end].size
                end += 1
            if now_ms + self.latency_ms(inputs) <= items[earliest[0]].deadline_ms:
                return start
            inputs -= items[start].size
            if earliest[0] == start:
                earliest.popleft()
        return count

    def _first_not_expired(self, now_ms: float) -> int:
        """Lazy drop on a deadline-ordered queue: everything before the first live request has expired."""
        for index, item in enumerate(self._items):
            if item.deadline_ms >= now_ms:
                return index
        return len(self._items)


def window_length(sizes: list[int], max_batch: int) -> int:
    """How many requests from the head fit in one batch of at most ``max_batch`` inputs (at least one)."""
    total = 0
    for count, size in enumerate(sizes):
        if total + size > max_batch:
            return max(count, 1)
        total += size
    return len(sizes)


# ----------------------------------------------------------------------------- vectorized form
def early_drop_window(deadlines_ms: np.ndarray, now_ms: float, max_batch: int, latency_table_ms: np.ndarray) -> int:
    """The early-drop decision for a queue of unit-size requests with ascending deadlines.

    Returns the index of the first request kept; the batch is ``[start, start + max_batch)``. Same
    decision as ``SessionQueue.form_batch`` with ``DropPolicy.EARLY`` (a property test checks it), in
    O(log n): with ascending deadlines, and windows that only shrink near the tail, whether a window
    starting at i is in time is monotone in i, so a binary search finds the first one.
    ``latency_table_ms[n]`` is ℓ for a batch of n inputs (index 0 unused).
    """
    count = len(deadlines_ms)
    full_latency = latency_table_ms[max_batch]
    # Windows starting before count - max_batch are full: in time iff deadline ≥ now + ℓ(max_batch).
    full_windows = max(count - max_batch, 0)
    first = int(np.searchsorted(deadlines_ms[:full_windows], now_ms + full_latency, side="left"))
    if first < full_windows:
        return first
    # The tail windows shrink: in time iff deadline[i] ≥ now + ℓ(count - i). Both sides are monotone.
    low, high = full_windows, count
    while low < high:
        middle = (low + high) // 2
        if deadlines_ms[middle] >= now_ms + latency_table_ms[count - middle]:
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


class ArraySessionQueue:
    """``SessionQueue`` for unit-size requests of one priority level, held in numpy arrays.

    Same decisions as ``SessionQueue`` (a property test replays random push / form_batch / expire
    sequences on both), built for callers that move requests in bulk, such as the simulator: requests
    arrive in chunks (``push_many``), and each ``form_batch`` costs O(log n) plus the slices it returns.
    ``tags`` is the caller's int64 payload per request and is never inspected. Requests with equal
    deadlines keep push order, as ``SessionQueue``'s sequence numbers do.

    ``latency_table_ms[n]`` is ℓ for a batch of n inputs (index 0 unused); it must cover every
    ``max_batch`` passed to ``form_batch``.
    """

    def __init__(self, latency_table_ms: np.ndarray, drop: DropPolicy | str = DropPolicy.EARLY) -> None:
        self.latency_table_ms = latency_table_ms
        self.drop = DropPolicy(drop)
        self._deadlines = np.empty(0)
        self._arrivals = np.empty(0)
        self._tags = np.empty(0, dtype=np.int64)
        self._head = 0  # items before it have left the queue; compacted on the next push

    def __len__(self) -> int:
        return len(self._deadlines) - self._head

    @property
    def inputs(self) -> int:
        return len(self)

    def oldest_arrival_ms(self) -> float | None:
        if len(self) == 0:
            return None
        return float(self._arrivals[self._head :].min())

    def earliest_deadline_ms(self) -> float | None:
        return float(self._deadlines[self._head]) if len(self) else None

    @property
    def deadlines_ms(self) -> np.ndarray:
        """Queued deadlines in queue order (a read-only view)."""
        return self._deadlines[self._head :]

    def push_many(self, deadlines_ms: np.ndarray, arrivals_ms: np.ndarray, tags: np.ndarray) -> None:
        """Queue a chunk of requests (in any order): the queue stays in (deadline, push order) order."""
        if len(deadlines_ms) == 0:
            return
        head = self._head
        if head == len(self._deadlines) and (
            len(deadlines_ms) < 2 or bool((deadlines_ms[1:] >= deadlines_ms[:-1]).all())
        ):
            # An empty queue takes a sorted chunk as it is (the common case in bulk callers).
            self._deadlines, self._arrivals, self._tags, self._head = deadlines_ms, arrivals_ms, tags, 0
            return
        old = self._deadlines[head:]
        deadlines = np.concatenate((old, deadlines_ms))
        arrivals = np.concatenate((self._arrivals[head:], arrivals_ms))
        tags = np.concatenate((self._tags[head:], tags))
        in_order = (len(old) == 0 or deadlines_ms[0] >= old[-1]) and (
            len(deadlines_ms) < 2 or bool((deadlines_ms[1:] >= deadlines_ms[:-1]).all())
        )
        if not in_order:
            order = np.argsort(deadlines, kind="stable")  # stable: ties keep push order
            deadlines, arrivals, tags = deadlines[order], arrivals[order], tags[order]
        self._deadlines, self._arrivals, self._tags, self._head = deadlines, arrivals, tags, 0

    def form_batch(
        self, now_ms: float, max_batch: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The next batch of at most ``max_batch`` requests and the requests dropped to form it, as
        (dropped deadlines, dropped tags, batch deadlines, batch arrivals, batch tags), in queue order."""
        head = self._head
        queued = self._deadlines[head:]
        if self.drop is DropPolicy.EARLY:
            start = early_drop_window(queued, now_ms, max_batch, self.latency_table_ms) if len(queued) else 0
        elif self.drop is DropPolicy.LAZY:
            start = int(queued.searchsorted(now_ms, side="left"))  # lazy_drop_start, without the wrapper
        else:
            start = 0
        end = min(len(queued), start + max_batch)
        first, cut, last = head, head + start, head + end
        self._head = last
        return (
            self._deadlines[first:cut],
            self._tags[first:cut],
            self._deadlines[cut:last],
            self._arrivals[cut:last],
            self._tags[cut:last],
        )

    def expire(self, now_ms: float) -> tuple[np.ndarray, np.ndarray]:
        """Drop requests whose deadline has passed (lazy and early policies): (deadlines, tags)."""
        if self.drop is DropPolicy.NONE:
            return self._deadlines[:0], self._tags[:0]
        head = self._head
        cut = head + lazy_drop_start(self._deadlines[head:], now_ms)
        self._head = cut
        return self._deadlines[head:cut], self._tags[head:cut]

    def drain(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Remove and return everything queued as (deadlines, arrivals, tags) (a re-plan moves the queue)."""
        head = self._head
        out = (self._deadlines[head:], self._arrivals[head:], self._tags[head:])
        self._deadlines, self._arrivals, self._tags, self._head = np.empty(0), np.empty(0), self._tags[:0], 0
        return out
