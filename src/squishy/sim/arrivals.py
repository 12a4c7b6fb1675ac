"""Open-loop arrival processes, generated in chunks with numpy.

Every process is a unit-rate renewal process in *operational time* u = Λ(t) = ∫ rate(t) dt, mapped back
to real time through Λ⁻¹. With a constant rate that is the plain process; with piecewise rates it is the
inhomogeneous Poisson process (exact) or a gamma/uniform process that speeds up and slows down with the
rate. Gaps in operational time:
- ``poisson``: exponential with mean 1;
- ``gamma``: shape k = 1/CV², scale 1/k (mean 1, coefficient of variation CV);
- ``uniform``: exactly 1, with a random phase so that sessions do not arrive in lockstep;
- ``trace``: recorded send times (ms), replayed as recorded; a load scale s compresses time by s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from squishy.errors import WorkloadError

ARRIVAL_KINDS = ("poisson", "uniform", "gamma", "trace")
GAP_BLOCK = 4096  # gaps are drawn from the generator this many at a time


@dataclass(frozen=True)
class ArrivalSpec:
    kind: str = "poisson"
    cv: float = 1.0  # gamma only
    trace_ms: tuple[float, ...] = ()  # trace only: send times in ms, ascending

    def __post_init__(self) -> None:
        if self.kind not in ARRIVAL_KINDS:
            raise WorkloadError(f"arrivals: unknown kind {self.kind!r}; choose one of {', '.join(ARRIVAL_KINDS)}")
        if self.kind == "gamma" and not self.cv > 0:
            raise WorkloadError("arrivals: gamma needs cv > 0")

    @classmethod
    def parse(cls, value: object, base: Path | None = None) -> ArrivalSpec:
        """``poisson``, ``uniform``, ``gamma:CV``, ``trace:FILE`` (one send time in ms per line), or a mapping."""
        if isinstance(value, ArrivalSpec):
            return value
        if isinstance(value, dict):
            kind = str(value.get("kind", "poisson"))
            if kind == "trace":
                return cls.parse(f"trace:{value['file']}", base)
            return cls(kind=kind, cv=float(value.get("cv", 1.0)))
        text = str(value)
        if text.startswith("gamma:"):
            return cls(kind="gamma", cv=float(text.split(":", 1)[1]))
        if text.startswith("trace:"):
            path = Path(text.split(":", 1)[1])
            if base is not None and not path.is_absolute():
                path = base / path
            try:
                times = np.sort(np.loadtxt(path, ndmin=1, dtype=float))
            except OSError:
                raise WorkloadError(f"arrivals: cannot read trace file {path}") from None
            return cls(kind="trace", trace_ms=tuple(times.tolist()))
        return cls(kind=text)


@dataclass(frozen=True)
class RateSchedule:
    """Piecewise-constant rate multipliers: ``factors[i]`` holds from ``starts_s[i]`` (the first start is 0)."""

    starts_s: tuple[float, ...] = (0.0,)
    factors: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if len(self.starts_s) != len(self.factors) or not self.starts_s or self.starts_s[0] != 0.0:
            raise WorkloadError("rate schedule: give one factor per step, the first step starting at 0 s")
        if any(b <= a for a, b in zip(self.starts_s, self.starts_s[1:], strict=False)):
            raise WorkloadError("rate schedule: step start times must increase")
        if any(not f > 0 for f in self.factors):
            raise WorkloadError("rate schedule: factors must be > 0")

    @classmethod
    def parse(cls, steps: Sequence[Sequence[float]] | None) -> RateSchedule:
        """``[[0, 1.0], [600, 1.4], ...]``: (start s, factor) pairs."""
        if not steps:
            return cls()
        return cls(tuple(float(s[0]) for s in steps), tuple(float(s[1]) for s in steps))

    def factor_at(self, time_s: float) -> float:
        index = int(np.searchsorted(np.asarray(self.starts_s), time_s, side="right")) - 1
        return self.factors[max(index, 0)]


class ArrivalStream:
    """Send times of one source at ``rate`` requests/s (times the schedule), in chunks."""

    def __init__(
        self,
        rate: float,
        spec: ArrivalSpec,
        schedule: RateSchedule,
        rng: np.random.Generator,
        trace_time_scale: float = 1.0,
    ) -> None:
        self.spec = spec
        self.trace_time_scale = trace_time_scale
        self.rng = rng
        self.rate = rate
        starts_ms = np.asarray(schedule.starts_s) * 1000.0
        rates_per_ms = np.asarray(schedule.factors) * rate / 1000.0
        cumulative = np.concatenate(([0.0], np.cumsum(np.diff(starts_ms) * rates_per_ms[:-1])))
        # One far point past the last step makes np.interp extrapolate the last rate.
        far_ms = starts_ms[-1] + 1e12
        self._knots_ms = np.append(starts_ms, far_ms)
        self._knots_u = np.append(cumulative, cumulative[-1] + 1e12 * rates_per_ms[-1])
        self._next_u: float | None = None  # the next arrival in operational time, once drawn
        self._gap_buffer = np.empty(0)
        self._gap_position = 0
        self._trace_index = 0

    def _operational(self, time_ms: float) -> float:
        return float(np.interp(time_ms, self._knots_ms, self._knots_u))

    def _draw(self, count: int) -> np.ndarray:
        kind = self.spec.kind
        if kind == "poisson":
            return self.rng.exponential(1.0, count)
        if kind == "gamma":
            shape = 1.0 / self.spec.cv**2
            return self.rng.gamma(shape, 1.0 / shape, count)
        return np.ones(count)

    def _gaps(self, count: int) -> np.ndarray:
        """The next ``count`` gaps. Drawn in fixed blocks, so how the run is chunked never changes them."""
        while len(self._gap_buffer) - self._gap_position < count:
            rest = self._gap_buffer[self._gap_position :]
            self._gap_buffer = np.concatenate((rest, self._draw(GAP_BLOCK)))
            self._gap_position = 0
        out = self._gap_buffer[self._gap_position : self._gap_position + count]
        self._gap_position += count
        return out

    def _unget(self, count: int) -> None:
        """Give back the last ``count`` gaps taken (drawn past the chunk's end)."""
        self._gap_position -= count

    def until(self, end_ms: float) -> np.ndarray:
        """Send times (ms, ascending) from where the last call stopped up to ``end_ms`` (exclusive)."""
        if self.rate <= 0:
            return np.empty(0)
        if self.spec.kind == "trace":
            return self._trace_until(end_ms)
        end_u = self._operational(end_ms)
        if self._next_u is None:
            first = self._gaps(1)[0]
            if self.spec.kind == "uniform":
                first *= self.rng.random()  # a random phase, so that uniform sources do not arrive in lockstep
            self._next_u = float(first)
        pieces = []
        start = self._next_u
        while start < end_u:
            expected = end_u - start
            count = int(expected + 4.0 * math.sqrt(expected) * max(self.spec.cv, 1.0) + 16)
            gaps = self._gaps(count)
            points = start + np.concatenate(([0.0], np.cumsum(gaps)))
            cut = int(points.searchsorted(end_u, side="left"))
            if cut == len(points):  # every drawn point falls before the end: go on from the last one
                pieces.append(points[:-1])
                start = float(points[-1])
                continue
            pieces.append(points[:cut])
            start = float(points[cut])
            self._unget(len(points) - 1 - cut)  # gaps past the next arrival are not used yet
        self._next_u = start
        if not pieces:
            return np.empty(0)
        units = np.concatenate(pieces)
        return np.interp(units, self._knots_u, self._knots_ms)

    def _trace_until(self, end_ms: float) -> np.ndarray:
        scaled = np.asarray(self.spec.trace_ms) / self.trace_time_scale
        stop = int(np.searchsorted(scaled, end_ms, side="left"))
        out = scaled[self._trace_index : stop]
        self._trace_index = stop
        return out
