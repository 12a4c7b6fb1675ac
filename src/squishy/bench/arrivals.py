"""When requests are due: arrival processes for open-loop load, fixed in advance from a seed.

The schedule is drawn before the run starts, so it cannot depend on how fast the server answers (open
loop), and the same seed gives the same trace for every system compared.

- ``poisson``: exponential gaps (CV 1).
- ``gamma:CV``: gamma gaps with coefficient of variation CV (shape 1/CV², scale 1/(rate·shape)); CV > 1
  is burstier than Poisson, CV < 1 smoother.
- ``uniform``: evenly spaced gaps of 1/rate (CV 0), from a random phase so a mix's models interleave.
- ``trace``: recorded timestamps, time-scaled to the requested rate and repeated to fill the run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from squishy.bench.errors import BenchError

ARRIVAL_KINDS = ("poisson", "gamma", "uniform", "trace")


@dataclass(frozen=True)
class Arrivals:
    kind: str = "poisson"
    cv: float = 1.0  # gamma only
    trace_s: tuple[float, ...] = ()  # trace only: timestamps in seconds, any origin

    def __post_init__(self) -> None:
        if self.kind not in ARRIVAL_KINDS:
            raise BenchError(f"unknown arrival process '{self.kind}' (one of {', '.join(ARRIVAL_KINDS)})")
        if self.kind == "gamma" and not (self.cv > 0 and math.isfinite(self.cv)):
            raise BenchError(f"gamma arrivals need a positive CV, got {self.cv}")
        if self.kind == "trace":
            object.__setattr__(self, "trace_s", tuple(sorted(float(t) for t in self.trace_s)))
            if len(self.trace_s) < 2 or self.trace_s[-1] <= self.trace_s[0]:
                raise BenchError("a trace needs at least two distinct timestamps")

    @classmethod
    def poisson(cls) -> Arrivals:
        return cls("poisson")

    @classmethod
    def gamma(cls, cv: float) -> Arrivals:
        return cls("gamma", cv=cv)

    @classmethod
    def uniform(cls) -> Arrivals:
        return cls("uniform", cv=0.0)

    @classmethod
    def trace(cls, timestamps_s: Sequence[float]) -> Arrivals:
        return cls("trace", trace_s=tuple(timestamps_s))

    @classmethod
    def parse(cls, text: str) -> Arrivals:
        """``poisson``, ``uniform``, ``gamma:CV`` or ``trace:FILE`` (timestamps in s: one a line, or a JSON list)."""
        kind, _, arg = text.partition(":")
        kind = kind.strip().lower()
        if kind in ("poisson", "uniform") and not arg:
            return cls(kind, cv=1.0 if kind == "poisson" else 0.0)
        if kind == "gamma" and arg:
            try:
                return cls.gamma(float(arg))
            except ValueError:
                raise BenchError(f"bad CV '{arg}' in '{text}': not a number") from None
        if kind == "trace" and arg:
            return cls.trace(read_trace(Path(arg)))
        raise BenchError(f"bad arrivals '{text}': use poisson, uniform, gamma:CV or trace:FILE")

    def describe(self) -> str:
        if self.kind == "gamma":
            return f"gamma:{self.cv:g}"
        if self.kind == "trace":
            return f"trace ({len(self.trace_s)} timestamps, {self.trace_rate_per_s:.1f} req/s as recorded)"
        return self.kind

    @property
    def trace_rate_per_s(self) -> float:
        """A trace's own mean rate (the rate it replays at when not rescaled)."""
        return (len(self.trace_s) - 1) / (self.trace_s[-1] - self.trace_s[0])

    def times_s(self, rate_per_s: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
        """Sorted arrival offsets in [0, duration_s) for a mean rate of ``rate_per_s``."""
        if self.kind == "trace":
            return self._trace_times(rate_per_s, duration_s)
        if self.kind == "uniform":
            gap_s = 1.0 / rate_per_s
            first_s = rng.uniform(0.0, gap_s)
            return np.arange(first_s, duration_s, gap_s)
        shape = 1.0 if self.kind == "poisson" else 1.0 / self.cv**2
        scale = 1.0 / (rate_per_s * shape)
        expected = rate_per_s * duration_s
        chunks: list[np.ndarray] = []
        end_s = 0.0
        while end_s < duration_s:
            # Enough gaps for the whole window nearly always in one draw: mean plus ten standard deviations.
            count = int(expected + 10 * math.sqrt(expected) * max(1.0, self.cv) + 16)
            times = end_s + np.cumsum(rng.gamma(shape, scale, count))
            chunks.append(times)
            end_s = float(times[-1])
        times = np.concatenate(chunks)
        return times[times < duration_s]

    def _trace_times(self, rate_per_s: float, duration_s: float) -> np.ndarray:
        trace = np.asarray(self.trace_s) - self.trace_s[0]
        trace = trace * (self.trace_rate_per_s / rate_per_s)
        # Repeat with one mean gap between the end of one pass and the start of the next.
        period_s = float(trace[-1]) + 1.0 / rate_per_s
        passes = math.ceil(duration_s / period_s)
        times = (trace[None, :] + period_s * np.arange(passes)[:, None]).ravel()
        return times[times < duration_s]


def read_trace(path: Path) -> list[float]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise BenchError(f"cannot read trace '{path}': {exc.strerror or exc}") from None
    try:
        if text.lstrip().startswith("["):
            return [float(t) for t in json.loads(text)]
        return [float(line.split(",")[0]) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    except (ValueError, TypeError) as exc:
        raise BenchError(f"trace '{path}' is not a list of timestamps in seconds: {exc}") from None


def schedule(
    rates_per_s: Sequence[float], arrivals: Arrivals, duration_s: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A mix's merged schedule: (arrival offsets in s, sorted; index of the model each one is for).

    Each model draws from its own stream spawned from ``seed``, so adding a model to a mix leaves the
    others' arrivals as they were.
    """
    streams = np.random.SeedSequence(seed).spawn(len(rates_per_s))
    times = [
        arrivals.times_s(rate, duration_s, np.random.default_rng(s))
        for rate, s in zip(rates_per_s, streams, strict=True)
    ]
    model_index = np.concatenate([np.full(len(t), i, dtype=np.int32) for i, t in enumerate(times)])
    all_times = np.concatenate(times) if times else np.empty(0)
    order = np.argsort(all_times, kind="stable")
    return all_times[order], model_index[order]
