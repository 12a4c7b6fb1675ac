"""When a batch leaves and how large it may be: squishy's rule and the baselines Nexus compares with.

A dispatch rule pairs with a ``SessionQueue`` (which decides *which* requests run and which are
dropped). The backend asks ``batch_limit`` and ``ready`` each time it could start a batch for the
session, ``wake_at`` when it is not ready, and reports each finished batch to ``observe``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from squishy.batching.queue import DropPolicy


class QueueView(Protocol):
    """What a dispatch rule reads of a queue (``SessionQueue`` and ``ArraySessionQueue`` both have it)."""

    def __len__(self) -> int: ...

    @property
    def inputs(self) -> int: ...

    def oldest_arrival_ms(self) -> float | None: ...


# Clipper's AIMD constants: additive increase by one input, multiplicative decrease by 10%.
AIMD_INCREASE = 1
AIMD_DECREASE_FACTOR = 0.9


@dataclass
class SquishyDispatch:
    """Nexus: early drop, batches up to the plan's size, and no waiting: a request that finds its
    backend idle runs at once (the duty cycle bounds the wait, it does not impose it)."""

    drop: DropPolicy = DropPolicy.EARLY

    def batch_limit(self, planned_batch: int) -> int:
        return planned_batch

    def ready(self, queue: QueueView, now_ms: float, planned_batch: int) -> bool:
        return len(queue) > 0

    def wake_at(self, queue: QueueView, now_ms: float, planned_batch: int) -> float | None:
        return None

    def observe(self, batch_inputs: int, batch_latency_ms: float, slo_ms: float) -> None:
        return None


@dataclass
class ClipperDispatch:
    """Clipper-style adaptive batching: AIMD on the batch size (start at 1, +1 after a batch whose
    latency stayed within the SLO, ×0.9 after one that did not), lazy drop, no waiting."""

    max_batch: int
    drop: DropPolicy = DropPolicy.LAZY
    size: float = field(default=1.0)

    def batch_limit(self, planned_batch: int) -> int:
        return max(1, min(self.max_batch, math.floor(self.size)))

    def ready(self, queue: QueueView, now_ms: float, planned_batch: int) -> bool:
        return len(queue) > 0

    def wake_at(self, queue: QueueView, now_ms: float, planned_batch: int) -> float | None:
        return None

    def observe(self, batch_inputs: int, batch_latency_ms: float, slo_ms: float) -> None:
        if batch_latency_ms <= slo_ms:
            self.size = min(float(self.max_batch), self.size + AIMD_INCREASE)
        else:
            self.size = max(1.0, self.size * AIMD_DECREASE_FACTOR)


@dataclass
class TfServingDispatch:
    """TF-Serving-style: a fixed batch B (the largest with 2ℓ(B) ≤ SLO) leaves when full or when its
    oldest request has waited ``timeout_ms`` = SLO − 2ℓ(B); nothing is dropped."""

    batch: int
    timeout_ms: float
    drop: DropPolicy = DropPolicy.NONE

    def batch_limit(self, planned_batch: int) -> int:
        return self.batch

    def ready(self, queue: QueueView, now_ms: float, planned_batch: int) -> bool:
        oldest = queue.oldest_arrival_ms()
        return oldest is not None and (queue.inputs >= self.batch or now_ms >= oldest + self.timeout_ms)

    def wake_at(self, queue: QueueView, now_ms: float, planned_batch: int) -> float | None:
        oldest = queue.oldest_arrival_ms()
        return None if oldest is None else oldest + self.timeout_ms

    def observe(self, batch_inputs: int, batch_latency_ms: float, slo_ms: float) -> None:
        return None


Dispatch = SquishyDispatch | ClipperDispatch | TfServingDispatch
