"""Request rates per session, as an exponentially weighted moving average over fixed windows."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

# Rates are counted over windows this long, then smoothed.
DEFAULT_WINDOW_S = 1.0
# The EWMA's time constant: a step in load is ~63% visible after this long (Nexus uses ~10 s).
DEFAULT_TIME_CONSTANT_S = 10.0


@dataclass
class RateEstimator:
    """Counts arrivals per key and turns them into smoothed requests/s.

    ``record(key, now_s)`` on every arrival; ``rates(now_s)`` closes any finished windows and returns the
    smoothed rate per key. A key's first window seeds its estimate directly, so a new session is not
    under-estimated for a whole time constant.
    """

    window_s: float = DEFAULT_WINDOW_S
    time_constant_s: float = DEFAULT_TIME_CONSTANT_S
    _counts: dict[Hashable, int] = field(default_factory=lambda: defaultdict(int))
    _estimates: dict[Hashable, float] = field(default_factory=dict)
    _window_start_s: float | None = None

    def record(self, key: Hashable, now_s: float, count: int = 1) -> None:
        if self._window_start_s is None:
            self._window_start_s = now_s
        self._roll(now_s)
        self._counts[key] += count

    def rates(self, now_s: float) -> dict[Hashable, float]:
        self._roll(now_s)
        return dict(self._estimates)

    def seed(self, rates: Mapping[Hashable, float]) -> None:
        """Start from known rates (e.g. the ones the first plan assumed)."""
        self._estimates.update(rates)

    def _roll(self, now_s: float) -> None:
        if self._window_start_s is None:
            self._window_start_s = now_s
            return
        windows = math.floor((now_s - self._window_start_s) / self.window_s)
        if windows <= 0:
            return
        alpha = 1.0 - math.exp(-self.window_s / self.time_constant_s)
        keys = set(self._counts) | set(self._estimates)
        for key in keys:
            estimate = self._estimates.get(key)
            for index in range(min(windows, 10_000)):
                observed = (self._counts.get(key, 0) if index == 0 else 0) / self.window_s
                estimate = observed if estimate is None else estimate + alpha * (observed - estimate)
            self._estimates[key] = estimate if estimate is not None else 0.0
        self._counts.clear()
        self._window_start_s += windows * self.window_s
