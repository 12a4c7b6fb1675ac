"""How long a batch of n inputs takes, as the batching policy predicts it.

The prediction starts from the profile's ℓ(n) (padded to an allowed batch size) and is scaled by the
*slowdown* observed while serving: the smoothed ratio of observed to profiled batch latency. On a CPU
machine the slots share cores with request handling, so batches run slower than the profiler saw;
early drop must use the time batches really take, or it keeps requests that will finish late. One
model per session: every queue of the session (on every backend) reads the same slowdown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from squishy.profiles import Profile
from squishy.scheduler import Allocation, Session, Settings
from squishy.scheduler.demand import prefix_demand

# Each observed batch moves the slowdown this share of the way towards its own ratio.
SLOWDOWN_SMOOTHING = 0.05
# One batch's ratio is clamped to this range first (a stalled batch must not blind early drop).
MIN_SLOWDOWN, MAX_SLOWDOWN = 0.5, 3.0


class LatencyModel:
    """ℓ(n) for the batching policy: ``table_ms[n]`` up to the table's end, linear beyond it (a client may
    send more rows in one request than the largest profiled batch), times the observed slowdown."""

    def __init__(self, table_ms: np.ndarray, track_slowdown: bool = True) -> None:
        if len(table_ms) < 2:
            raise ValueError("a latency table needs at least ℓ(1)")
        self.track_slowdown = track_slowdown
        self.slowdown = 1.0
        self.retable(table_ms)

    def retable(self, table_ms: np.ndarray) -> None:
        """Predict from a new table (a prefix group's new mix), keeping the observed slowdown."""
        self.table_ms = np.asarray(table_ms, dtype=float)
        largest = len(self.table_ms) - 1
        self._per_input_ms = float(self.table_ms[largest]) / largest

    @classmethod
    def from_profile(cls, profile: Profile, track_slowdown: bool = True) -> LatencyModel:
        return cls(profile_table(profile), track_slowdown)

    @classmethod
    def from_function(cls, latency_ms: Callable[[int], float], max_inputs: int) -> LatencyModel:
        return cls(np.array([0.0] + [latency_ms(n) for n in range(1, max_inputs + 1)]))

    @property
    def max_inputs(self) -> int:
        return len(self.table_ms) - 1

    def profiled_ms(self, inputs: int) -> float:
        if inputs < len(self.table_ms):
            return float(self.table_ms[inputs])
        return self._per_input_ms * inputs

    def latency_ms(self, inputs: int) -> float:
        """ℓ(inputs) as early drop should predict it: the profile, scaled by the observed slowdown."""
        return self.profiled_ms(inputs) * self.slowdown

    def latencies_ms(self, inputs: np.ndarray) -> np.ndarray:
        """``latency_ms`` for many sizes at once (the same floats, element by element)."""
        inside = inputs < len(self.table_ms)
        profiled = np.where(inside, self.table_ms[np.minimum(inputs, len(self.table_ms) - 1)], 0.0)
        if not inside.all():
            profiled = np.where(inside, profiled, self._per_input_ms * inputs)
        return profiled * self.slowdown

    def observe(self, inputs: int, observed_ms: float) -> None:
        """A batch of ``inputs`` took ``observed_ms``: move the slowdown towards that ratio."""
        if not self.track_slowdown:
            return
        predicted = self.profiled_ms(inputs)
        if predicted > 0:
            ratio = min(max(observed_ms / predicted, MIN_SLOWDOWN), MAX_SLOWDOWN)
            self.slowdown += SLOWDOWN_SMOOTHING * (ratio - self.slowdown)


def profile_table(profile: Profile) -> np.ndarray:
    """ℓ(n) for n = 0..max_batch (index 0 is 0), each n padded to the next allowed batch size."""
    return np.array([0.0] + [profile.batch_latency_ms(n) for n in range(1, profile.max_batch + 1)])


def prefix_group_table(allocation: Allocation, profiles: Mapping[str, Profile], max_inputs: int) -> np.ndarray:
    """ℓ(n) for n = 0..max_inputs of a prefix group's batches, as its queue predicts them: the trunk on n
    inputs and each member's head on its share of them at the plan's mix (the members' rate shares, as the
    scheduler sized the group); a size beyond what the group allows keeps the last allowed one's time."""
    sessions = [Session(m.model, m.slo_ms, m.rate) for m in allocation.members]
    group = prefix_demand(allocation.model, sessions, profiles, Settings()).profile
    table = np.zeros(max_inputs + 1)
    for n in range(1, max_inputs + 1):
        batch = group.smallest_allowed_at_least(n)
        table[n] = group.latency_ms(batch) if batch is not None else table[n - 1]
    return table
