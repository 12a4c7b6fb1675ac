"""The discrete-event core: a clock and a heap of events ordered by (time, priority, sequence).

Ties are broken by priority (lower first) and then by scheduling order, so a run is a pure function of
its inputs and seed. Nothing here knows about requests or backends.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

# Priorities at equal times: the control loop decides before plans switch, plans switch before new
# arrivals are routed, and arrivals are routed before backends look at their queues.
PRIORITY_CONTROL = 0
PRIORITY_SWITCH = 1
PRIORITY_ARRIVALS = 2
PRIORITY_BACKEND = 3


class Engine:
    """Runs callbacks in simulated time (milliseconds)."""

    def __init__(self) -> None:
        self.now_ms = 0.0
        self._heap: list[tuple[float, int, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._sequence = itertools.count()
        self.events_run = 0

    def schedule(self, time_ms: float, priority: int, callback: Callable[..., Any], *args: Any) -> None:
        if time_ms < self.now_ms:
            raise ValueError(f"cannot schedule in the past ({time_ms} < {self.now_ms})")
        heapq.heappush(self._heap, (time_ms, priority, next(self._sequence), callback, args))

    def run(self, until_ms: float = float("inf")) -> None:
        """Run events up to and including ``until_ms`` (all of them by default)."""
        heap = self._heap
        pop = heapq.heappop
        count = 0
        while heap and heap[0][0] <= until_ms:
            time_ms, _, _, callback, args = pop(heap)
            self.now_ms = time_ms
            callback(*args)
            count += 1
        self.events_run += count
        if until_ms != float("inf"):
            self.now_ms = max(self.now_ms, until_ms)

    def peek(self) -> tuple[float, int]:
        """(time, priority) of the next event; (inf, 0) when none is scheduled."""
        if not self._heap:
            return float("inf"), 0
        head = self._heap[0]
        return head[0], head[1]

    def advance(self, time_ms: float) -> None:
        """Move the clock forward inside an event (an event handler that processes a run of arrivals
        up to, not past, the next scheduled event)."""
        if time_ms < self.now_ms:
            raise ValueError(f"cannot go back in time ({time_ms} < {self.now_ms})")
        self.now_ms = time_ms

    def stop(self) -> None:
        """Drop every pending event: ``run`` returns after the current one."""
        self._heap.clear()

    def __len__(self) -> int:
        return len(self._heap)
