"""Frontends: route each request of a session to one of the session's backends by plan weights.

Deficit round robin with unit-size requests: each round, target i earns a quantum q_i = w_i / max(w)
and sends as many requests as its accumulated credit allows, targets in a fixed order. After r rounds
target i has sent exactly ⌊r·q_i⌋ requests, so its share never drifts more than one request from
w_i / Σw. The sequence is a pure function of the weights, so routing is deterministic; it is generated
many rounds at a time with numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class DeficitRoundRobin:
    def __init__(self, weights: Sequence[float]) -> None:
        weights_array = np.asarray(weights, dtype=float)
        if len(weights_array) == 0 or not np.all(weights_array >= 0) or weights_array.max() <= 0:
            raise ValueError("deficit round robin needs at least one positive weight")
        self.quantum = weights_array / weights_array.max()
        self.rounds = 0
        self._buffer = np.empty(0, dtype=np.int64)
        self._order = np.arange(len(weights_array), dtype=np.int64)
        self._per_round = float(self.quantum.sum())

    def take(self, count: int) -> np.ndarray:
        """The targets (indices into the weights) of the next ``count`` requests."""
        if len(self.quantum) == 1:
            return np.zeros(count, dtype=np.int64)
        while len(self._buffer) < count:
            rounds = int((count - len(self._buffer)) / self._per_round) + 2
            index = np.arange(self.rounds, self.rounds + rounds + 1, dtype=float)
            credit = np.floor(index[:, None] * self.quantum[None, :] + 1e-9)
            sends = np.diff(credit, axis=0).astype(np.int64)
            pattern = np.repeat(np.tile(self._order, rounds), sends.ravel())
            self._buffer = np.concatenate((self._buffer, pattern))
            self.rounds += rounds
        out, self._buffer = self._buffer[:count], self._buffer[count:]
        return out


def split_by_target(targets: np.ndarray, count: int) -> list[np.ndarray]:
    """For each target 0..count-1, the positions routed to it (ascending)."""
    if count == 1:
        return [np.arange(len(targets))]
    order = np.argsort(targets, kind="stable")
    bounds = np.cumsum(np.bincount(targets, minlength=count))[:-1]
    return np.split(order, bounds)
