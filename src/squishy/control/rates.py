"""Request rates per session: counts over fixed windows, smoothed by an EWMA that jumps on a level shift.

Arrivals are counted in windows [k·w, (k+1)·w) of absolute time, so the same arrival times give the
same counts however they are fed: one by one as requests come in (the server) or a chunk at a time
(the simulator generates arrivals ahead and counts them in bulk). A window is folded into the estimate
once time has passed its end.

The EWMA (time constant ~10 s, as in Nexus) keeps the estimate steady under Poisson noise, but it lags
a real step in load by tens of seconds, and a control loop that re-plans on every 10% of that lag
installs plan after plan. So the estimator also watches for a *level shift*: when the last
``shift_windows`` windows all lie outside the band around the estimate in the same direction, by more
than Poisson noise could explain (``SHIFT_SIGMAS`` standard deviations), the estimate jumps to the mean
of all but the first of them (the first may straddle the step). A step is then seen in about
``shift_windows`` windows, and the loop re-plans once for it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np

# Rates are counted over windows this long, then smoothed.
DEFAULT_WINDOW_S = 1.0
# The EWMA's time constant: a gradual change is ~63% visible after this long (Nexus uses ~10 s).
DEFAULT_TIME_CONSTANT_S = 10.0
# A level shift: this many consecutive windows outside [low, high] × the estimate, beyond the noise.
DEFAULT_SHIFT_WINDOWS = 2
DEFAULT_SHIFT_BAND = (0.8, 1.1)
SHIFT_SIGMAS = 3.0
# Folding stops counting idle windows one by one after this many (the estimate has long reached zero).
MAX_FOLDED_WINDOWS = 10_000


@dataclass
class RateEstimator:
    """``record`` / ``record_times`` arrivals per key; ``rates(now_s)`` folds finished windows and returns
    the smoothed requests/s per key. A key's first window seeds its estimate directly, so a new session is
    not under-estimated for a whole time constant."""

    window_s: float = DEFAULT_WINDOW_S
    time_constant_s: float = DEFAULT_TIME_CONSTANT_S
    shift_windows: int = DEFAULT_SHIFT_WINDOWS  # 0: no level-shift detection (a plain EWMA)
    shift_band: tuple[float, float] = DEFAULT_SHIFT_BAND
    _counts: dict[Hashable, dict[int, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    _estimates: dict[Hashable, float] = field(default_factory=dict)
    # Per key, the consecutive latest windows outside the band: (direction +1/-1, observed rate).
    _recent: dict[Hashable, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))
    _next_window: int | None = None  # the first window not folded yet
    shifts: int = 0  # level shifts detected (for reports)

    def record(self, key: Hashable, now_s: float, count: int = 1) -> None:
        self._counts[key][math.floor(now_s / self.window_s)] += count

    def record_times(self, key: Hashable, times_s: np.ndarray) -> None:
        """Count many arrivals at once (``times_s`` ascending); the same counts as ``record`` one by one."""
        if len(times_s) == 0:
            return
        windows = np.floor(times_s / self.window_s).astype(np.int64)
        first = int(windows[0])
        per_window = np.bincount(windows - first)
        counts = self._counts[key]
        for offset in np.flatnonzero(per_window).tolist():
            counts[first + offset] += int(per_window[offset])

    def seed(self, rates: Mapping[Hashable, float]) -> None:
        """Start from known rates (e.g. the ones the first plan assumed)."""
        self._estimates.update(rates)

    def rates(self, now_s: float) -> dict[Hashable, float]:
        """Smoothed requests/s per key, every window that ended by ``now_s`` folded in."""
        current = math.floor(now_s / self.window_s)
        if self._next_window is None:
            starts = [min(c) for c in self._counts.values() if c]
            self._next_window = min(starts) if starts else current
        if current > self._next_window:
            for key in set(self._counts) | set(self._estimates):
                self._fold(key, self._next_window, current)
            self._next_window = current
        return dict(self._estimates)

    def _fold(self, key: Hashable, first: int, stop: int) -> None:
        """Fold windows first..stop-1 of ``key`` into its estimate, in order."""
        alpha = 1.0 - math.exp(-self.window_s / self.time_constant_s)
        counts = self._counts.get(key, {})
        estimate = self._estimates.get(key)
        recent = self._recent[key]
        window = first
        stop = min(stop, first + MAX_FOLDED_WINDOWS)
        while window < stop:
            observed = counts.pop(window, 0) / self.window_s
            if estimate is None:
                estimate = observed
            else:
                estimate += alpha * (observed - estimate)
                estimate = self._shifted(recent, observed, estimate)
            window += 1
        for stale in [w for w in counts if w < stop]:
            del counts[stale]
        self._estimates[key] = estimate if estimate is not None else 0.0

    def _shifted(self, recent: list[tuple[int, float]], observed: float, estimate: float) -> float:
        """Track the latest windows that lay outside the band in one direction; jump on a level shift."""
        if self.shift_windows <= 0:
            return estimate
        low, high = self.shift_band
        noise = SHIFT_SIGMAS * math.sqrt(max(estimate * self.window_s, 1.0)) / self.window_s
        direction = 1 if observed > high * estimate + noise else -1 if observed < low * estimate - noise else 0
        if direction == 0 or (recent and recent[-1][0] != direction):
            recent.clear()
        if direction != 0:
            recent.append((direction, observed))
        if len(recent) >= self.shift_windows:
            # The first window out of the band may straddle the step (or be a new key's partial first
            # window); the ones after it lie wholly at the new level, so the estimate jumps to those.
            settled = recent[1:] or recent
            estimate = sum(rate for _, rate in settled) / len(settled)
            recent.clear()
            self.shifts += 1
        return estimate
