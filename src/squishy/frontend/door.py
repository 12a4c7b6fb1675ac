"""Admission at the front door: shed new requests when the server itself is the bottleneck.

Early drop at the backends (``squishy.batching``) protects SLOs when the backends are the bottleneck. When
the server process is (small models, JSON, one event loop on a few cores), requests wait where the core
cannot see them: in socket buffers, in the HTTP parser and in the event loop's ready queue. A request
stamped at its handler's start looks fresh after seconds in those queues, and FIFO service then makes
every request late (goodput as the client sees it collapses while the core's own counters look fine).

The door sees that wait and keeps it short:

- **The wait before handling.** The HTTP protocol stamps each request when its first bytes are read
  (``squishy.received_s`` in the ASGI scope, before parsing); the handler's start minus that stamp is
  the wait in the parser and the ready queue. The wait in the kernel's socket buffers is not visible;
  the event loop's lag (a probe that measures how late a timer runs) stands in for it, since a loop that
  runs callbacks late also reads sockets late. Only a *sustained* lag counts (the smallest of the last few
  samples): one stall (a collection, a slow log write) is a pause, not a backlog, and shedding the requests
  that follow it would fail a lightly loaded server's clients for nothing. gRPC requests have no earlier
  stamp: their wait is the lag.
- **CoDel's rule** (Nichols and Jacobson, 2012; Facebook's variant for RPC servers), with hysteresis. A
  standing queue is one whose *minimum* wait over an interval (100 ms) stays above a threshold: a burst
  that drains does not count. The server is overloaded once that minimum exceeds a quarter of the
  tightest SLO budget (SLO − ℓ(1)) among the requests seen (at least the target, 5 ms): a loop near
  saturation that still meets every SLO is left alone. While overloaded, a request that waited longer
  than the target is shed at once, with 503 / ``UNAVAILABLE`` and the reason, before its body is read or
  decoded. That keeps the queue near the target, so the requests served stay within their SLO and the
  rejections are answered fast; the overload ends after an interval in which nothing had to be shed.
- **Deadlines, always.** A request whose wait already leaves no room for its model's own latency within
  its SLO is shed whatever the state: serving it would only make a late reply.
- **Models apart.** The shedding is charged to the models that flood the door: while a queue stands, a
  model whose share of the requests that arrived in the last interval is below its fair share (an equal
  split among the models that sent requests, or the share its config reserves with the
  ``door_reserved_share`` parameter) is not shed for the queue, only for its deadline.
- **Priorities.** For a model with priority levels (Triton's ``dynamic_batching.priority_levels``), a
  request of priority level p (1 is the highest) may wait (levels − p + 1) × the target before it is shed
  for the queue, so lower priorities are shed first. The priority is in the body, so such models are
  judged for the queue after decoding.

Everything here runs on the event loop's thread: no locks.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from squishy.clock import SYSTEM_CLOCK, Clock
from squishy.metrics import ServerMetrics
from squishy.runtime.api import ModelSpec, UnavailableError

DEFAULT_TARGET_MS = 5.0
DEFAULT_INTERVAL_MS = 100.0
DEFAULT_LAG_PROBE_MS = 5.0
# Overload is entered when the shortest wait of an interval exceeds this share of the tightest SLO budget
# (SLO − ℓ(1)) among the requests seen, or the target if that is larger.
ENTER_SHARE_OF_BUDGET = 0.25
# The lag stands in for the wait in socket buffers until it decays: a loop that was late a moment ago
# still has a backlog to read.
LAG_HALF_LIFE_MS = 50.0
# A lag counts once this many probe samples in a row were late by at least that much.
SUSTAINED_LAG_SAMPLES = 3
RESERVED_SHARE_PARAMETER = "door_reserved_share"

SHED_DEADLINE = "deadline"  # the wait leaves no room for the model's latency within its SLO
SHED_QUEUE = "queue"  # a standing queue, and this request waited past the target


class ShedError(UnavailableError):
    """Shed at the door: the server is the bottleneck. ``reason`` is one of the SHED_* names."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DoorConfig:
    enabled: bool = True
    target_ms: float = DEFAULT_TARGET_MS
    interval_ms: float = DEFAULT_INTERVAL_MS
    lag_probe_ms: float = DEFAULT_LAG_PROBE_MS

    def __post_init__(self) -> None:
        if not (self.target_ms > 0 and self.interval_ms > 0 and self.lag_probe_ms > 0):
            raise ValueError("the door's target, interval and lag probe period must be positive")


@dataclass
class _Interval:
    """One CoDel interval's observations."""

    start_ms: float
    min_wait_ms: float = math.inf
    arrived: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # requests seen, by model
    min_budget_ms: float = math.inf  # the tightest SLO − ℓ(1) among the requests seen
    queue_sheds: int = 0
    last_ms: float = -math.inf  # when its last request arrived

    @property
    def total(self) -> int:
        return sum(self.arrived.values())


@dataclass(frozen=True)
class _Model:
    """What the door needs of a model, read once from its spec."""

    slo_ms: float
    alone_ms: float  # running one request alone takes this long: the least a request still needs
    priority_levels: int
    default_priority: int
    reserved_share: float


class Door:
    """One door for a server's HTTP and gRPC frontends (they share its event loop)."""

    def __init__(
        self,
        config: DoorConfig | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        alone_ms: Callable[[ModelSpec], float] | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.config = config or DoorConfig()
        self.clock = clock
        self._alone_ms = alone_ms or (lambda spec: 0.0)
        self._metrics = metrics
        self._lag_ms = 0.0
        self._lag_at_ms = clock.now_ms()
        self._recent_lags_ms: deque[float] = deque(maxlen=SUSTAINED_LAG_SAMPLES)
        self._interval = _Interval(clock.now_ms())
        self._previous = _Interval(clock.now_ms())  # the last finished interval: the shares judged by
        self.standing = False  # overloaded: a standing queue that threatens SLOs (see _observe)
        self.in_flight: dict[tuple[str, str], int] = defaultdict(int)  # admitted, not answered yet
        self.shed: dict[str, int] = defaultdict(int)  # by reason
        self._models: dict[tuple[str, str], _Model] = {}

    # ------------------------------------------------------------------------------ the wait
    def observe_lag(self, lag_ms: float) -> None:
        """A lag probe's sample: how late a timer ran."""
        now_ms = self.clock.now_ms()
        self._recent_lags_ms.append(max(lag_ms, 0.0))
        sustained_ms = min(self._recent_lags_ms) if len(self._recent_lags_ms) == SUSTAINED_LAG_SAMPLES else 0.0
        self._lag_ms = max(sustained_ms, self.lag_ms(now_ms))
        self._lag_at_ms = now_ms
        if self._metrics is not None:
            self._metrics.observe_loop_lag(max(lag_ms, 0.0))

    def lag_ms(self, now_ms: float) -> float:
        """The loop's recent sustained lag, decayed since the last sample."""
        elapsed_ms = max(now_ms - self._lag_at_ms, 0.0)
        return self._lag_ms * 0.5 ** (elapsed_ms / LAG_HALF_LIFE_MS)

    def wait_ms(self, received_ms: float | None, now_ms: float) -> float:
        """How long a request handled now has waited since it reached the machine (estimated)."""
        seen_ms = now_ms - received_ms if received_ms is not None else 0.0
        return max(seen_ms, 0.0) + self.lag_ms(now_ms)

    # ------------------------------------------------------------------------------ decisions
    def admit(self, spec: ModelSpec, received_ms: float | None, *, parsed: bool = False, priority: int = 0) -> float:
        """Admit a request of ``spec`` or raise ``ShedError``. Returns the estimated wait (ms) so far.

        Called before the body is read (``parsed`` False), then again after decoding with the request's
        ``priority`` (``parsed`` True): a model with priority levels is judged for the queue only then,
        the others only before. A request admitted by the first call is paired with one
        ``finished(spec)``, whatever happens after."""
        now_ms = self.clock.now_ms()
        wait_ms = self.wait_ms(received_ms, now_ms)
        if not self.config.enabled:
            return wait_ms
        model = self._model(spec)
        key = (spec.name, spec.version)
        if not parsed:
            self._observe(spec.name, model, wait_ms, now_ms)
            if wait_ms + model.alone_ms >= model.slo_ms:
                self._shed(
                    spec,
                    SHED_DEADLINE,
                    f"model {spec.name!r}: the server is overloaded: the request waited {wait_ms:.0f} ms before "
                    f"it could be handled, which leaves no time to run it within its {model.slo_ms:g} ms SLO",
                )
        judged_now = parsed == (model.priority_levels > 0)
        if (
            judged_now
            and self.standing
            and wait_ms > self._allowed_wait_ms(model, priority)
            and self._over_share(spec.name, model)
        ):
            self._interval.queue_sheds += 1
            self._shed(
                spec,
                SHED_QUEUE,
                f"model {spec.name!r}: the server is overloaded (requests wait {wait_ms:.0f} ms before they "
                f"are handled, target {self.config.target_ms:g} ms); retry later",
            )
        if not parsed:
            self._set_in_flight(key, self.in_flight[key] + 1)
        return wait_ms

    def finished(self, spec: ModelSpec) -> None:
        """An admitted request was answered (with a result or an error)."""
        key = (spec.name, spec.version)
        self._set_in_flight(key, max(self.in_flight[key] - 1, 0))

    def _set_in_flight(self, key: tuple[str, str], count: int) -> None:
        self.in_flight[key] = count
        if self._metrics is not None:
            self._metrics.set_pending(key[0], key[1], count)

    def _allowed_wait_ms(self, model: _Model, priority: int) -> float:
        if model.priority_levels <= 0:
            return self.config.target_ms
        level = min(max(priority or model.default_priority, 1), model.priority_levels)
        return self.config.target_ms * (model.priority_levels - level + 1)

    def _over_share(self, name: str, model: _Model) -> bool:
        """Whether ``name`` sent at least its fair share of the last interval's requests."""
        judged = self._previous if self._previous.total else self._interval
        total = judged.total
        if total == 0:
            return True
        share = judged.arrived.get(name, 0) / total
        active = sum(1 for count in judged.arrived.values() if count > 0)
        fair = max(model.reserved_share, 1.0 / active if active > 1 else 0.0)
        return share >= fair

    def _observe(self, name: str, model: _Model, wait_ms: float, now_ms: float) -> None:
        interval = self._interval
        if now_ms - interval.start_ms >= self.config.interval_ms:
            self.standing = self._overloaded_after(interval, now_ms)
            self._previous = interval
            self._interval = interval = _Interval(now_ms)
        interval.min_wait_ms = min(interval.min_wait_ms, wait_ms)
        interval.min_budget_ms = min(interval.min_budget_ms, model.slo_ms - model.alone_ms)
        interval.arrived[name] += 1
        interval.last_ms = now_ms

    def _overloaded_after(self, interval: _Interval, now_ms: float) -> bool:
        """CoDel with hysteresis. A queue stands when even the shortest wait of a whole interval exceeded
        a threshold; an interval without requests has none. To *enter* overload that threshold is a share
        of the tightest SLO budget seen (at least the target): a loop near saturation that still meets
        every SLO is left alone, so the door does not lower the rate the server sustains. Once in, the
        door sheds at the short target, which keeps the queue (and the time a rejection takes) near the
        target, and it *leaves* after an interval in which nothing had to be shed for the queue, or after
        a gap of an interval with no request at all (no queue stands through silence)."""
        if interval.min_wait_ms == math.inf or now_ms - interval.last_ms >= self.config.interval_ms:
            return False
        if self.standing:
            return interval.queue_sheds > 0 or interval.min_wait_ms > self.config.target_ms
        enter_ms = max(self.config.target_ms, ENTER_SHARE_OF_BUDGET * interval.min_budget_ms)
        return interval.min_wait_ms > enter_ms

    def _shed(self, spec: ModelSpec, reason: str, message: str) -> None:
        self.shed[reason] += 1
        if self._metrics is not None:
            self._metrics.record_shed(spec.name, spec.version, reason)
        raise ShedError(message, reason)

    def _model(self, spec: ModelSpec) -> _Model:
        key = (spec.name, spec.version)
        known = self._models.get(key)
        if known is None:
            known = self._models[key] = _describe(spec, self._alone_ms(spec))
        return known

    def forget(self, spec: ModelSpec) -> None:
        """The model's spec changed (reload): read it again next time."""
        self._models.pop((spec.name, spec.version), None)

    # --------------------------------------------------------------------------- the lag probe
    async def probe_lag(self) -> None:
        """Run forever on the serving loop: sleep a short period, record how late the wake-up came."""
        period_ms = self.config.lag_probe_ms
        while True:
            before_ms = self.clock.now_ms()
            await asyncio.sleep(period_ms / 1000.0)
            self.observe_lag(self.clock.now_ms() - before_ms - period_ms)


def _describe(spec: ModelSpec, alone_ms: float) -> _Model:
    levels = default = 0
    batching = getattr(spec.config, "dynamic_batching", None) if spec.config is not None else None
    if batching is not None:
        levels = int(getattr(batching, "priority_levels", 0) or 0)
        default = int(getattr(batching, "default_priority_level", 0) or 0)
    reserved = 0.0
    text = spec.parameters.get(RESERVED_SHARE_PARAMETER) if spec.parameters else None
    if text:
        try:
            reserved = min(max(float(text), 0.0), 1.0)
        except ValueError:
            reserved = 0.0
    return _Model(spec.slo_ms, alone_ms, levels, default or levels, reserved)
