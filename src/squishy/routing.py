"""Routing a session's requests across its backends in proportion to the plan's rates.

Deficit round robin: in round r = 1, 2, ... each target i in turn sends ⌊r·q_i⌋ − ⌊(r−1)·q_i⌋ requests,
where q_i = w_i / max(w) is its quantum. After r rounds target i has sent exactly ⌊r·q_i⌋, so over any
run of requests each target gets its share to within one request, with no randomness. The sequence is
generated many rounds at a time with numpy; ``pick`` takes one request's target (the server, per
request), ``take`` many at once (the simulator, per chunk of arrivals): both read the same sequence.

On one machine every queue is in sight, so ``pick_by_backlog`` lets a target with a clearly shorter
backlog (per unit of planned rate) take the request: no slot idles while another slot of the same
session has a queue. Pure: no clocks, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np

if TYPE_CHECKING:
    from squishy.control import Choice

Target = TypeVar("Target")

# Credits are floored with this tolerance, so that r·q that should be an integer is not one short.
CREDIT_EPSILON = 1e-9
# A target must beat the round-robin choice's backlog score by more than this to take the request.
BACKLOG_TOLERANCE = 1e-9


class DeficitRoundRobin(Generic[Target]):
    """Picks one of ``targets`` per request, each in proportion to its weight."""

    def __init__(self, targets: Sequence[Target], weights: Sequence[float]) -> None:
        if len(targets) != len(weights) or not targets:
            raise ValueError("deficit round robin needs one weight per target, and at least one target")
        weights_array = np.asarray(weights, dtype=float)
        if not np.all(weights_array >= 0) or weights_array.max() <= 0:
            raise ValueError("weights must be non-negative with at least one positive")
        self.targets = list(targets)
        self.weights = [float(w) for w in weights]
        self._quantum = weights_array / weights_array.max()
        self._per_round = float(self._quantum.sum())
        self._rounds = 0  # rounds generated so far
        self._buffer = np.empty(0, dtype=np.int64)  # target indices generated and not yet taken
        self._position = 0
        self._single = len(self.targets) == 1

    def weight_of(self, target: Target) -> float:
        return self.weights[self.targets.index(target)]

    def pick(self) -> Target:
        """The next request's target."""
        if self._single:
            return self.targets[0]
        if self._position >= len(self._buffer):
            self._refill(1)
        index = int(self._buffer[self._position])
        self._position += 1
        return self.targets[index]

    def take(self, count: int) -> np.ndarray:
        """The targets (indices into ``targets``) of the next ``count`` requests."""
        if self._single:
            return np.zeros(count, dtype=np.int64)
        available = len(self._buffer) - self._position
        if available < count:
            self._refill(count - available)
        out = self._buffer[self._position : self._position + count]
        self._position += count
        return out

    def _refill(self, needed: int) -> None:
        rest = self._buffer[self._position :]
        rounds = int(needed / self._per_round) + 2
        index = np.arange(self._rounds, self._rounds + rounds + 1, dtype=float)
        credit = np.floor(index[:, None] * self._quantum[None, :] + CREDIT_EPSILON)
        sends = np.diff(credit, axis=0).astype(np.int64)
        order = np.arange(len(self.targets), dtype=np.int64)
        pattern = np.repeat(np.tile(order, rounds), sends.ravel())
        self._buffer = np.concatenate((rest, pattern))
        self._position = 0
        self._rounds += rounds


def pick_by_backlog(router: DeficitRoundRobin[Target], backlog: Callable[[Target], int]) -> Target:
    """Deficit round robin, except that a target whose backlog per unit of planned rate is clearly
    shorter takes the request (the first such target in order, when several are)."""
    choice = router.pick()
    if len(router.targets) == 1:
        return choice
    best, best_score = choice, (backlog(choice) + 1) / router.weight_of(choice)
    for target, weight in zip(router.targets, router.weights, strict=True):
        if weight <= 0:
            continue
        score = (backlog(target) + 1) / weight
        if score < best_score - BACKLOG_TOLERANCE:
            best, best_score = target, score
    return best


def split_by_target(targets: np.ndarray, count: int) -> list[np.ndarray]:
    """For each target 0..count-1, the positions routed to it (ascending)."""
    if count == 1:
        return [np.arange(len(targets))]
    order = np.argsort(targets, kind="stable")
    bounds = np.cumsum(np.bincount(targets, minlength=count))[:-1]
    return np.split(order, bounds)


@dataclass
class TaskRoute:
    """Which session answers a task's next request, and whether it is admitted at all.

    ``follow`` points it at a re-plan's choice of variants; ``admit`` and ``target`` are then asked once per
    request, in arrival order. Shares are spread by fractional credits, not coins, so the served rate is
    what the plan packed, not that rate plus noise."""

    route: Hashable | None = None  # the session of the chosen variant
    accuracy: float | None = None  # the delivered accuracy of the admitted requests
    share: float = 1.0  # of the task's requests admitted; the rest are beyond capacity
    upper_route: Hashable | None = None  # a more accurate variant's session that answers part of them
    upper_share: float = 0.0  # of the admitted requests, those sent to ``upper_route``
    fallback_route: Hashable | None = None  # a much cheaper variant's session, planned to absorb bursts
    _credit: float = field(default=0.0, repr=False)
    _upper_credit: float = field(default=0.0, repr=False)

    def follow(self, choice: Choice | None, task: Hashable, asked: Mapping[Hashable, float]) -> None:
        """Serve as ``choice`` says for ``task``; ``asked`` holds the measured rates it was made for."""
        route = choice.routes.get(task) if choice is not None else None
        self.route = route
        self.accuracy = choice.accuracy.get(task) if choice is not None else None
        split = choice.splits.get(task) if choice is not None else None
        self.upper_route = split[0] if split is not None else None
        self.upper_share = split[1] if split is not None else 0.0
        self.fallback_route = choice.fallbacks.get(task) if choice is not None else None
        rate = asked.get(task, 0.0)
        served = choice.served.get(task, rate) if choice is not None else rate
        self.share = min(1.0, served / rate) if rate > 0 else 1.0

    def admit(self) -> bool:
        """Whether to serve the next request: exactly ``share`` of them, evenly spread."""
        if self.share >= 1.0:
            return True
        self._credit += self.share
        if self._credit >= 1.0:
            self._credit -= 1.0
            return True
        return False

    def target(self) -> Hashable | None:
        """The session that answers the next admitted request (``upper_share`` of them the upper one)."""
        if self.upper_route is not None and self.upper_share > 0:
            self._upper_credit += self.upper_share
            if self._upper_credit >= 1.0:
                self._upper_credit -= 1.0
                return self.upper_route
        return self.route

    def chain(self) -> list[Hashable]:
        """The task's planned variants, costliest first: each falls back to the next under bursts."""
        return [s for s in (self.upper_route, self.route, self.fallback_route) if s is not None]
