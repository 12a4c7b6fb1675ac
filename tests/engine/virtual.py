"""``ServingCore`` driven on a hand-driven clock, without threads: the tests' stand-in for the workers.

The core runs exactly as in ``squishy serve`` (admission, routing, the control loop, plan installs,
the callbacks); only the workers are replaced. Where a worker thread would take the backend's turn,
run the batch on its executor and report, this driver calls the same turn policy
(``Machine.settle``), lets the batch take ``factor`` × its profiled ℓ(b) of virtual time, and reports
through the same callbacks. Events at one instant run in the simulator's order: control ticks, then
arrivals, then batch completions.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from squishy.batching import Item
from squishy.batching.turn import BackendTurn, Turn
from squishy.clock import ManualClock
from squishy.profiles import Profile
from squishy.runtime.api import InferRequest, InferResponse, ServingError, UnavailableError
from squishy.runtime.backend import BatchTiming, SessionWork
from squishy.runtime.core import ServingCore
from squishy.runtime.executors import NullExecutor

PRIORITY_CONTROL, PRIORITY_ARRIVAL, PRIORITY_BACKEND = 0, 2, 3


@dataclass
class Outcome:
    status: str  # good | late | dropped | error
    finish_ms: float
    response: InferResponse | None = None
    error: str = ""


@dataclass
class VirtualServer:
    core: ServingCore
    clock: ManualClock
    factor: float = 1.0  # batches take this multiple of the profiled ℓ(b)
    control: bool = True  # tick the control loop every control_tick_s
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    batches: list[tuple[int, float, list[str]]] = field(default_factory=list)  # (slot, start, request ids)
    decisions: list[tuple[float, str, int, float]] = field(default_factory=list)  # (ms, reason, backends, headroom)
    _events: list[tuple[float, int, int, Callable[..., None], tuple[Any, ...]]] = field(default_factory=list)
    _sequence: itertools.count = field(default_factory=itertools.count)
    _outputs: dict[str, NullExecutor] = field(default_factory=dict)
    _next_tick_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.control:
            self._next_tick_ms = self.core.config.control_tick_s * 1000.0
            self._at(self._next_tick_ms, PRIORITY_CONTROL, self._tick)

    # ------------------------------------------------------------------------------------ inputs
    def submit_at(self, time_ms: float, request: InferRequest) -> None:
        self._at(time_ms, PRIORITY_ARRIVAL, self._arrive, request)

    def run(self, until_ms: float) -> None:
        while self._events and self._events[0][0] <= until_ms:
            time_ms, _, _, action, args = heapq.heappop(self._events)
            self.clock.set_ms(time_ms)
            action(*args)
        self.clock.set_ms(max(self.clock.now_ms(), until_ms))

    # --------------------------------------------------------------------------------- internals
    def _at(self, time_ms: float, priority: int, action: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._events, (time_ms, priority, next(self._sequence), action, args))

    def _arrive(self, request: InferRequest) -> None:
        request.arrival_ms = self.clock.now_ms()
        rid = request.request_id
        try:
            slot = self.core.submit(request, lambda outcome: self._reply(rid, outcome))
        except ServingError as exc:
            status = "dropped" if isinstance(exc, UnavailableError) else "error"
            self.outcomes[rid] = Outcome(status, self.clock.now_ms(), error=str(exc))
            return
        self._settle(self.core.machine.backends[slot])

    def _reply(self, rid: str, outcome: InferResponse | BaseException) -> None:
        now = self.clock.now_ms()
        if isinstance(outcome, BaseException):
            status = "dropped" if isinstance(outcome, UnavailableError) else "error"
            self.outcomes[rid] = Outcome(status, now, error=str(outcome))
        else:
            self.outcomes[rid] = Outcome(self._verdict.pop(rid), now, response=outcome)

    def _settle(self, first: BackendTurn | None) -> None:
        now = self.clock.now_ms()
        for turn in self.core.machine.settle(now, first):
            for slot, items in turn.dropped:
                self.core.dropped(slot, items)
            if turn.slot is not None:
                self._start(turn)

    def _start(self, turn: Turn) -> None:
        assert turn.slot is not None
        work: SessionWork = turn.slot.payload
        session = self.core._session_of(str(turn.slot.session))
        inputs = sum(item.size for item in turn.batch)
        trunk = self.core._trunks.get(str(turn.slot.session))
        if trunk is None:
            duration = session.latency.profiled_ms(inputs) * self.factor
        else:
            duration = self._prefix_batch_ms(trunk.session.profile, turn.batch) * self.factor
        now = self.clock.now_ms()
        self.batches.append((turn.backend.index, now, [item.payload.request.request_id for item in turn.batch]))
        self._at(now + duration, PRIORITY_BACKEND, self._finish, turn, work, now, duration)

    def _prefix_batch_ms(self, trunk: Profile, batch: list[Item]) -> float:
        """What a prefix group's batch takes, as a real one would: the trunk on every request, each member's
        head (its whole model's ℓ minus the trunk's) on its own requests."""
        counts: dict[str, int] = {}
        for item in batch:
            counts[item.payload.routed] = counts.get(item.payload.routed, 0) + 1
        total = trunk.batch_latency_ms(len(batch))
        for member, count in counts.items():
            whole = self.core._sessions[member].profile
            total += max(0.0, whole.batch_latency_ms(count) - trunk.batch_latency_ms(count))
        return total

    def _finish(self, turn: Turn, work: SessionWork, started_ms: float, duration_ms: float) -> None:
        finish = self.clock.now_ms()
        outputs = []
        for item in turn.batch:
            request: InferRequest = item.payload.request
            # A prefix group's batch answers each request with its own model's outputs.
            spec = item.payload.spec if str(turn.slot.session) in self.core._trunks else work.spec
            executor = self._outputs.setdefault(spec.name, NullExecutor(spec))
            outputs.append(executor.run(request.inputs, request.requested_outputs))
            self._verdict[request.request_id] = "good" if finish <= item.deadline_ms else "late"
        timing = BatchTiming(started_ms, 0.0, duration_ms, 0.0)
        assert turn.slot is not None
        self.core.batch_done(turn.slot, turn.batch, outputs, timing)
        turn.backend.busy = False
        self._settle(turn.backend)

    def _tick(self) -> None:
        decision = self.core.control_step()
        now = self.clock.now_ms()
        if decision is not None:
            self.decisions.append((now, str(decision.request.reason), decision.plan.num_backends, decision.headroom))
        self._settle(None)
        self._next_tick_ms += self.core.config.control_tick_s * 1000.0
        self._at(self._next_tick_ms, PRIORITY_CONTROL, self._tick)

    @property
    def _verdict(self) -> dict[str, str]:
        verdicts: dict[str, str] = self.__dict__.setdefault("_verdicts", {})
        return verdicts
