"""When requests are sent: open-loop arrival processes, one generator for the load generator
(``squishy bench``) and the simulator, so that the same rates, process, duration and seed give the same
send times to both (a real run and its simulated twin see one trace).

Every process is a unit-rate point process in *operational time* u = Λ(t) = ∫ rate(t) dt, mapped back
to real time through Λ⁻¹. With a constant rate that is the plain process; with a piecewise rate schedule
(``RateSchedule``) it is the inhomogeneous Poisson process (exact), or a gamma, uniform or trace process
that speeds up and slows down with the rate. Gaps in operational time:

- ``poisson``: exponential with mean 1 (CV 1);
- ``gamma:CV``: gamma with shape k = 1/CV² and scale 1/k, i.e. at a constant rate r, gaps of shape 1/CV²
  and scale 1/(r·k); CV > 1 is burstier than Poisson, CV < 1 smoother;
- ``uniform``: exactly 1 (CV 0), from a random phase so that sources do not arrive in lockstep;
- ``trace:FILE``: recorded timestamps (s) as a shape: moved to start at 0, time-scaled to the requested
  rate, and repeated (one mean gap between passes) to fill the run;
- ``replay:FILE``: recorded timestamps (s) sent exactly as recorded, once; neither the rate nor the rate
  schedule applies (a stream's ``trace_time_scale`` speeds the replay up: the simulator's load scale).

A trace file holds timestamps in seconds: one a line (``#`` comments, anything after a comma ignored),
or a JSON list.

Send times are fixed by the seed before anything runs (open loop), whatever the server does. Each source
(a model of the load generator's mix, a session then a query of the simulator's workload, in order)
draws from its own stream of the seed (``source_rng``), so adding a source leaves the others' arrivals as
they were, and how a run asks for its arrivals (all at once, or chunk by chunk as the simulator does)
never changes them, to the last bit.

    from squishy.arrivals import Arrivals, schedule
    offsets_s, model_index = schedule([100.0, 30.0], Arrivals.gamma(2.0), duration_s=12.0, seed=1)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from squishy.errors import ArrivalsError

ARRIVAL_KINDS = ("poisson", "gamma", "uniform", "trace", "replay")
FORMS = "poisson, uniform, gamma:CV, trace:FILE or replay:FILE"
# Gaps are drawn, and summed into arrival points, this many at a time. Points depend on the blocks
# only, never on where a caller cuts the stream, which is what makes chunked generation exact.
GAP_BLOCK = 4096
# The simulator draws every source's arrivals from stream 1 of the run's seed (batch latencies from
# stream 2, query fan-out from stream 3); the load generator uses the same streams.
ARRIVAL_STREAM = 1


@dataclass(frozen=True)
class Arrivals:
    """An arrival process: what ``parse`` reads, what ``ArrivalStream`` generates from."""

    kind: str = "poisson"
    cv: float = 1.0  # the gaps' coefficient of variation: given for gamma, 1 for poisson, 0 for uniform
    trace_s: tuple[float, ...] = ()  # trace and replay only: timestamps in seconds, sorted on creation

    def __post_init__(self) -> None:
        if self.kind not in ARRIVAL_KINDS:
            raise ArrivalsError(f"unknown arrival process '{self.kind}' (one of {', '.join(ARRIVAL_KINDS)})")
        if self.kind == "gamma" and not (self.cv > 0 and math.isfinite(self.cv)):
            raise ArrivalsError(f"gamma arrivals need a positive CV, got {self.cv}")
        if self.kind in ("poisson", "uniform"):
            object.__setattr__(self, "cv", 1.0 if self.kind == "poisson" else 0.0)
        if self.kind in ("trace", "replay"):
            times = tuple(sorted(float(t) for t in self.trace_s))
            object.__setattr__(self, "trace_s", times)
            if not all(math.isfinite(t) for t in times):
                raise ArrivalsError("a trace's timestamps must be finite numbers of seconds")
        if self.kind == "trace" and (len(self.trace_s) < 2 or self.trace_s[-1] <= self.trace_s[0]):
            raise ArrivalsError("a trace needs at least two distinct timestamps")
        if self.kind == "replay" and (not self.trace_s or self.trace_s[0] < 0):
            raise ArrivalsError("a replay needs at least one timestamp, none before 0 s")

    @classmethod
    def poisson(cls) -> Arrivals:
        return cls("poisson")

    @classmethod
    def gamma(cls, cv: float) -> Arrivals:
        return cls("gamma", cv=cv)

    @classmethod
    def uniform(cls) -> Arrivals:
        return cls("uniform")

    @classmethod
    def trace(cls, timestamps_s: Sequence[float]) -> Arrivals:
        """Recorded timestamps (any origin) as a shape, time-scaled to the requested rate and repeated."""
        return cls("trace", trace_s=tuple(timestamps_s))

    @classmethod
    def replay(cls, send_times_s: Sequence[float]) -> Arrivals:
        """Send times (s from the start of the run) sent exactly as given, once."""
        return cls("replay", trace_s=tuple(send_times_s))

    @classmethod
    def parse(cls, value: object, base: Path | None = None) -> Arrivals:
        """``poisson``, ``uniform``, ``gamma:CV``, ``trace:FILE`` or ``replay:FILE`` (timestamps in s: one a
        line, or a JSON list), or a mapping (``{kind: gamma, cv: 2}``, ``{kind: trace, file: F}``) as
        scenario files write it. A relative FILE is read from ``base`` when given."""
        if isinstance(value, Arrivals):
            return value
        if isinstance(value, Mapping):
            kind = str(value.get("kind", "poisson")).strip().lower()
            if kind in ("trace", "replay"):
                if "file" not in value:
                    raise ArrivalsError(f"{kind} arrivals need a 'file'")
                return cls.parse(f"{kind}:{value['file']}", base)
            if kind == "gamma":
                return cls.parse(f"gamma:{value.get('cv', 1.0)}")
            return cls.parse(kind)
        text = str(value)
        kind, _, arg = text.partition(":")
        kind = kind.strip().lower()
        if kind in ("poisson", "uniform") and not arg:
            return cls(kind)
        if kind == "gamma" and arg:
            try:
                return cls.gamma(float(arg))
            except ValueError:
                raise ArrivalsError(f"bad CV '{arg}' in '{text}': not a number") from None
        if kind in ("trace", "replay") and arg:
            path = Path(arg)
            if base is not None and not path.is_absolute():
                path = base / path
            return cls(kind, trace_s=tuple(read_trace(path)))
        raise ArrivalsError(f"bad arrivals '{text}': use {FORMS}")

    def describe(self) -> str:
        if self.kind == "gamma":
            return f"gamma:{self.cv:g}"
        if self.kind == "trace":
            return f"trace ({len(self.trace_s)} timestamps, {self.trace_rate_per_s:.1f} req/s as recorded)"
        if self.kind == "replay":
            return f"replay ({len(self.trace_s)} send times up to {self.trace_s[-1]:g} s)"
        return self.kind

    @property
    def trace_rate_per_s(self) -> float:
        """A trace's own mean rate (the rate it replays at when not rescaled)."""
        span_s = self.trace_s[-1] - self.trace_s[0] if self.trace_s else 0.0
        return (len(self.trace_s) - 1) / span_s if span_s > 0 else 0.0

    def times_s(self, rate_per_s: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
        """Sorted send times in [0, duration_s) of one source at a mean rate of ``rate_per_s``."""
        stream = ArrivalStream(rate_per_s, self, RateSchedule(), rng)
        return stream.until(duration_s * 1000.0) / 1000.0


def read_trace(path: Path) -> list[float]:
    """Timestamps in seconds from a file: one a line (``#`` comments; a CSV's first column), or a JSON list."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ArrivalsError(f"cannot read trace '{path}': {exc.strerror or exc}") from None
    try:
        if text.lstrip().startswith("["):
            return [float(t) for t in json.loads(text)]
        return [float(line.split(",")[0]) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    except (ValueError, TypeError) as exc:
        raise ArrivalsError(f"trace '{path}' is not a list of timestamps in seconds: {exc}") from None


@dataclass(frozen=True)
class RateSchedule:
    """Piecewise-constant rate multipliers: ``factors[i]`` holds from ``starts_s[i]`` (the first start is 0)."""

    starts_s: tuple[float, ...] = (0.0,)
    factors: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if len(self.starts_s) != len(self.factors) or not self.starts_s or self.starts_s[0] != 0.0:
            raise ArrivalsError("rate schedule: give one factor per step, the first step starting at 0 s")
        if any(b <= a for a, b in zip(self.starts_s, self.starts_s[1:], strict=False)):
            raise ArrivalsError("rate schedule: step start times must increase")
        if any(not f > 0 for f in self.factors):
            raise ArrivalsError("rate schedule: factors must be > 0")

    @classmethod
    def parse(cls, steps: Sequence[Sequence[float]] | None) -> RateSchedule:
        """``[[0, 1.0], [600, 1.4], ...]``: (start s, factor) pairs."""
        if not steps:
            return cls()
        try:
            return cls(tuple(float(s[0]) for s in steps), tuple(float(s[1]) for s in steps))
        except (TypeError, ValueError, IndexError):
            raise ArrivalsError(f"rate schedule: expected [[start s, factor], ...], got {steps!r}") from None

    def factor_at(self, time_s: float) -> float:
        index = int(np.searchsorted(np.asarray(self.starts_s), time_s, side="right")) - 1
        return self.factors[max(index, 0)]


class ArrivalStream:
    """Send times of one source at ``rate`` requests/s (times the schedule's factor), in ms, in chunks.

    Gaps are drawn and summed in fixed blocks (``GAP_BLOCK``), so the points are the same however the
    stream is cut: one ``until(end)`` call or many give identical arrays, bit for bit.
    """

    def __init__(
        self,
        rate: float,
        arrivals: Arrivals,
        schedule: RateSchedule,
        rng: np.random.Generator,
        trace_time_scale: float = 1.0,  # replay only: the recorded times are divided by this
    ) -> None:
        self.arrivals = arrivals
        self.rate = rate
        self.rng = rng
        self.trace_time_scale = trace_time_scale
        starts_ms = np.asarray(schedule.starts_s) * 1000.0
        rates_per_ms = np.asarray(schedule.factors) * rate / 1000.0
        cumulative = np.concatenate(([0.0], np.cumsum(np.diff(starts_ms) * rates_per_ms[:-1])))
        # One far point past the last step makes np.interp extrapolate the last rate.
        far_ms = starts_ms[-1] + 1e12
        self._knots_ms = np.append(starts_ms, far_ms)
        self._knots_u = np.append(cumulative, cumulative[-1] + 1e12 * rates_per_ms[-1])
        self._pending_u = np.empty(0)  # points drawn, in operational time, not returned yet
        self._last_u: float | None = None  # the last point drawn (None: nothing drawn yet)
        self._trace_gaps = np.empty(0)
        self._trace_position = 0
        self._replay_ms = np.empty(0)
        self._replay_index = 0
        if arrivals.kind == "trace":
            recorded = np.asarray(arrivals.trace_s)
            # A pass's gaps in operational time (mean 1), led by one mean gap from the previous pass.
            self._trace_gaps = np.concatenate(([1.0], np.diff(recorded) * arrivals.trace_rate_per_s))
        elif arrivals.kind == "replay":
            self._replay_ms = np.asarray(arrivals.trace_s) * 1000.0 / trace_time_scale

    def _draw(self, count: int) -> np.ndarray:
        kind = self.arrivals.kind
        if kind == "poisson":
            return self.rng.exponential(1.0, count)
        if kind == "gamma":
            shape = 1.0 / self.arrivals.cv**2
            return self.rng.gamma(shape, 1.0 / shape, count)
        if kind == "trace":
            positions = (self._trace_position + np.arange(count)) % len(self._trace_gaps)
            self._trace_position = int(positions[-1] + 1) % len(self._trace_gaps)
            return self._trace_gaps[positions]
        return np.ones(count)

    def _first_point_before(self) -> float:
        """Where the sum of gaps starts: the first arrival is one gap after it."""
        kind = self.arrivals.kind
        if kind == "uniform":
            return self.rng.random() - 1.0  # a random phase, so that uniform sources do not arrive in lockstep
        if kind == "trace":
            return -1.0  # the trace's leading gap is 1: its first timestamp is sent at 0
        return 0.0

    def _next_block(self) -> np.ndarray:
        if self._last_u is None:
            self._last_u = self._first_point_before()
        points = self._last_u + np.cumsum(self._draw(GAP_BLOCK))
        self._last_u = float(points[-1])
        return points

    def until(self, end_ms: float) -> np.ndarray:
        """Send times (ms, ascending) from where the last call stopped up to ``end_ms`` (exclusive)."""
        if self.arrivals.kind == "replay":
            stop = int(np.searchsorted(self._replay_ms, end_ms, side="left"))
            out = self._replay_ms[self._replay_index : stop]
            self._replay_index = max(stop, self._replay_index)
            return out
        if self.rate <= 0:
            return np.empty(0)
        end_u = float(np.interp(end_ms, self._knots_ms, self._knots_u))
        blocks = [self._pending_u]
        while self._last_u is None or self._last_u < end_u:
            blocks.append(self._next_block())
        points = np.concatenate(blocks) if len(blocks) > 1 else self._pending_u
        cut = int(points.searchsorted(end_u, side="left"))
        self._pending_u = points[cut:]
        return np.interp(points[:cut], self._knots_u, self._knots_ms)


def source_rng(seed: int, index: int) -> np.random.Generator:
    """Source ``index``'s own generator in a run seeded with ``seed``: the simulator's and the load
    generator's, so that both send the same requests at the same times."""
    return np.random.default_rng([seed, ARRIVAL_STREAM, index])


def source_streams(
    rates_per_s: Sequence[float],
    arrivals: Arrivals | Sequence[Arrivals],
    seed: int,
    rate_schedule: RateSchedule | None = None,
    trace_time_scale: float = 1.0,
) -> list[ArrivalStream]:
    """One stream per source, in order, each from its own generator (``source_rng``). ``arrivals`` is
    every source's process, or one per source."""
    rate_schedule = rate_schedule or RateSchedule()
    processes = [arrivals] * len(rates_per_s) if isinstance(arrivals, Arrivals) else list(arrivals)
    return [
        ArrivalStream(rate, process, rate_schedule, source_rng(seed, index), trace_time_scale)
        for index, (rate, process) in enumerate(zip(rates_per_s, processes, strict=True))
    ]


def schedule(
    rates_per_s: Sequence[float],
    arrivals: Arrivals | Sequence[Arrivals],
    duration_s: float,
    seed: int,
    rate_schedule: RateSchedule | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A mix's merged schedule over [0, duration_s): (send offsets in s, sorted; index of each one's source).

    Source i's send times are exactly the simulator's for source i with the same seed, rates and process
    (``offsets_s * 1000`` may differ from them in the last bit: compare ``offsets_s`` with theirs / 1000).
    """
    streams = source_streams(rates_per_s, arrivals, seed, rate_schedule)
    per_source = [stream.until(duration_s * 1000.0) for stream in streams]
    if not per_source:
        return np.empty(0), np.empty(0, dtype=np.int32)
    source = np.concatenate([np.full(len(t), i, dtype=np.int32) for i, t in enumerate(per_source)])
    times_ms = np.concatenate(per_source)
    order = np.argsort(times_ms, kind="stable")
    return times_ms[order] / 1000.0, source[order]
