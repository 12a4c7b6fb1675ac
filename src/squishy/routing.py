"""Routing a session's requests across its backends in proportion to the plan's rates.

Deficit round robin: backends take turns; each turn adds its weight (its share of the session's rate,
normalized so the largest is 1) to its deficit, and a backend receives requests while its deficit
covers them. Over any run of requests each backend gets its share to within one request, with no
randomness, so the simulator and the real frontend route identically. Pure: no clocks, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Target = TypeVar("Target")


@dataclass
class DeficitRoundRobin(Generic[Target]):
    """Picks one of ``targets`` per request, each in proportion to its weight."""

    targets: Sequence[Target]
    weights: Sequence[float]
    _quanta: list[float] = field(init=False, repr=False)
    _deficits: list[float] = field(init=False, repr=False)
    _turn: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.targets) != len(self.weights) or not self.targets:
            raise ValueError("deficit round robin needs one positive weight per target, and at least one target")
        if any(w < 0 for w in self.weights) or max(self.weights) <= 0:
            raise ValueError("weights must be non-negative with at least one positive")
        largest = max(self.weights)
        self._quanta = [w / largest for w in self.weights]
        self._deficits = [0.0] * len(self.targets)

    def weight_of(self, target: Target) -> float:
        return self.weights[list(self.targets).index(target)]

    def pick(self) -> Target:
        count = len(self.targets)
        while self._deficits[self._turn] < 1.0 - 1e-12:
            # The largest quantum is 1, so at most one full round passes before some deficit covers a request.
            self._turn = (self._turn + 1) % count
            self._deficits[self._turn] += self._quanta[self._turn]
        self._deficits[self._turn] -= 1.0
        return self.targets[self._turn]
