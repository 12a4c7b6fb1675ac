"""A backend's turn: which batch it runs next. One policy, called by the real worker threads
(``squishy.runtime.backend``) and by the simulated backends (``squishy.sim``), under their own clocks.

A backend runs the sessions the plan gives it. Each turn it
1. sweeps every queue of its own for requests that can no longer finish in time (they are answered at
   once; the queue's drop rule decides which);
2. visits its sessions round-robin from where the last turn stopped, and runs the first ready
   session's batch, of at most that session's batch limit (the plan's batch, raised by the burst rule
   in ``batching.limits``): every session waits at most one round, and a request that finds its
   backend idle runs at once (the duty cycle bounds waiting, it does not impose it). A backend without
   a duty cycle (the batch-oblivious baselines) runs first come, first served instead: the session whose
   oldest request arrived first;
3. with nothing of its own to run, steals a batch from a busy peer on the same machine: only a session
   it can run, and only a batch short enough that its own sessions' promises still hold (a request of
   its own arriving meanwhile waits at most that batch more; ``steal_budget_ms`` is the least slack
   d + ℓ(b) leaves under any of its sessions' budgets). A backend with no sessions may steal anything.

``Machine.settle`` fixes the order in which idle backends of one machine look at their queues after
something changed (a request queued, a batch started or finished, a new plan): the backend where it
happened first, then the others by index, until none starts a batch. Worker threads reach the same
fixed point through notifications; the simulator and the tests replay it deterministically.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from squishy.batching.policies import Dispatch, SquishyDispatch

# A request of a task's costlier variant that its queue would finish within this share of its SLO before
# the deadline runs on the cheaper variant beside it instead: the reply's path back to the client takes
# milliseconds the executor's clock does not see, more on a busy machine.
FALLBACK_GUARD_SHARE = 0.1


class TurnQueue(Protocol):
    """What a turn needs of a queue (``SessionQueue`` and ``ArraySessionQueue`` both have it)."""

    def __len__(self) -> int: ...

    @property
    def inputs(self) -> int: ...

    def oldest_arrival_ms(self) -> float | None: ...

    def latency_ms(self, inputs: int) -> float: ...

    def form_batch(self, now_ms: float, max_batch: int) -> Any: ...

    def sweep(self, now_ms: float) -> Any: ...


@dataclass(eq=False)
class Slot:
    """One session's share of one backend: its queue, the most it runs per turn, its dispatch rule.

    ``payload`` is the substrate's own (an executor, a simulated latency model); the turn never reads it.
    """

    session: Hashable
    queue: Any  # a TurnQueue
    batch: int
    dispatch: Dispatch = field(default_factory=SquishyDispatch)
    payload: Any = None
    # A cheaper variant of the same task on this backend: requests this queue would finish later than
    # ``fallback_guard_ms`` before their deadline run there instead of being dropped or answered late.
    fallback: Hashable | None = None
    fallback_guard_ms: float = 0.0


def declare_fallbacks(slots: Sequence[Slot], chains: Iterable[tuple[Sequence[Hashable], float]]) -> None:
    """Link each task's variants on this backend to their fallbacks: ``chains`` holds, per task, its planned
    variants' sessions costliest first and its SLO; each one here falls back to the next cheaper one, on
    this backend or on a peer of its machine (``BackendTurn._fall_back`` looks for it there)."""
    here = {slot.session: slot for slot in slots}
    for chain, slo_ms in chains:
        for costlier, cheaper in itertools.pairwise(chain):
            slot = here.get(costlier)
            if slot is not None:
                slot.fallback = cheaper
                slot.fallback_guard_ms = FALLBACK_GUARD_SHARE * slo_ms


@dataclass(eq=False)
class Turn:
    """What one look at the queues decided."""

    backend: BackendTurn
    slot: Slot | None = None  # whose batch runs now (None: nothing to run)
    batch: Any = None  # the queue's batch: a list of Items, or ArrayItems
    stolen: bool = False  # the slot belongs to a peer
    dropped: list[tuple[Slot, Any]] = field(default_factory=list)  # (slot, its dropped requests)
    fell_back: list[tuple[Slot, Slot, Any]] = field(default_factory=list)  # (from, to, requests moved)


class BackendTurn:
    """One backend's turn state: its slots, where its round stands, whether it is running a batch."""

    def __init__(self, index: int, fcfs: bool = False) -> None:
        self.index = index
        self.fcfs = fcfs
        self.slots: list[Slot] = []
        self._by_session: dict[Hashable, Slot] = {}
        self.round_robin = 0  # the slot whose turn is next
        self.busy = False  # running a batch now
        self.peers: list[BackendTurn] = []  # backends on the same machine, in index order
        self.steal_budget_ms = 0.0  # the longest batch it may steal (0: none)
        self.stealable: frozenset[Hashable] = frozenset()  # sessions it can run for a peer
        self.batches_stolen = 0

    def slot(self, session: Hashable) -> Slot | None:
        return self._by_session.get(session)

    @property
    def sessions(self) -> list[Hashable]:
        return [slot.session for slot in self.slots]

    def assign(
        self,
        slots: Sequence[Slot],
        *,
        fcfs: bool | None = None,
        steal_budget_ms: float = 0.0,
        stealable: Iterable[Hashable] = (),
    ) -> list[Slot]:
        """Run exactly ``slots`` from now on. A session that stays keeps its queue (taking the new batch
        limit, dispatch rule and payload); the slots of sessions that leave are returned so the caller
        can move their queued requests. A batch in flight finishes first: nothing accepted is lost."""
        if fcfs is not None:
            self.fcfs = fcfs
        self.steal_budget_ms = steal_budget_ms
        self.stealable = frozenset(stealable)
        kept: list[Slot] = []
        for slot in slots:
            current = self._by_session.get(slot.session)
            if current is None:
                kept.append(slot)
                continue
            current.batch, current.dispatch, current.payload = slot.batch, slot.dispatch, slot.payload
            current.fallback, current.fallback_guard_ms = slot.fallback, slot.fallback_guard_ms
            kept.append(current)
        staying = {slot.session for slot in kept}
        leaving = [slot for slot in self.slots if slot.session not in staying]
        self.slots = kept
        self._by_session = {slot.session: slot for slot in kept}
        self.round_robin = 0
        return leaving

    def backlog(self, session: Hashable) -> int:
        """Inputs of ``session`` waiting here, plus one while a batch runs (the routing rule's reading)."""
        slot = self._by_session.get(session)
        waiting = slot.queue.inputs if slot is not None else 0
        return waiting + (1 if self.busy else 0)

    # ---------------------------------------------------------------------------------- deciding
    def next(self, now_ms: float) -> Turn:
        """Sweep, then this backend's own next batch, or else a batch stolen from a busy peer."""
        turn = Turn(self)
        self._fall_back(now_ms, turn)  # first: what a costlier variant would drop, a cheaper one may serve
        for slot in self.slots:
            gone = slot.queue.sweep(now_ms)
            if len(gone):
                turn.dropped.append((slot, gone))
        if self.fcfs:
            self._first_come(now_ms, turn)
        else:
            self._round_robin(now_ms, turn)
        if turn.slot is None:
            self._steal(now_ms, turn)
        return turn

    def _fall_back(self, now_ms: float, turn: Turn) -> None:
        """Per-request choice under bursts: a variant's requests that its queue would not finish in time
        move to the cheaper variant the plan declared for it (before they are dropped): on this backend,
        or else on the first peer of this machine that runs it (the plan keeps the cheap variant resident
        somewhere, not necessarily beside every copy of the costly one)."""
        for slot in self.slots:
            if slot.fallback is None or len(slot.queue) == 0:
                continue
            target = self._by_session.get(slot.fallback)
            if target is None:
                target = next((p.slot(slot.fallback) for p in self.peers if p.slot(slot.fallback) is not None), None)
            if target is None:
                continue
            limit = slot.dispatch.batch_limit(slot.batch)
            round_ms = sum(
                other.queue.latency_ms(min(other.queue.inputs, other.dispatch.batch_limit(other.batch)))
                for other in self.slots
                if other is not slot and other.queue.inputs
            )
            risky = slot.queue.take_at_risk(
                now_ms, limit, round_ms + slot.queue.latency_ms(limit), slot.fallback_guard_ms
            )
            if not len(risky):
                continue
            moved, hopeless = target.queue.adopt(risky, now_ms)
            if len(moved):
                turn.fell_back.append((slot, target, moved))
            if len(hopeless):
                turn.dropped.append((slot, hopeless))

    def _round_robin(self, now_ms: float, turn: Turn) -> None:
        count = len(self.slots)
        for step in range(count):
            index = (self.round_robin + step) % count
            slot = self.slots[index]
            if not slot.dispatch.ready(slot.queue, now_ms, slot.batch):
                continue
            decision = slot.queue.form_batch(now_ms, slot.dispatch.batch_limit(slot.batch))
            if len(decision.dropped):
                turn.dropped.append((slot, decision.dropped))
            if len(decision.batch):
                self.round_robin = (index + 1) % count
                turn.slot, turn.batch = slot, decision.batch
                return

    def _first_come(self, now_ms: float, turn: Turn) -> None:
        while True:
            chosen: Slot | None = None
            oldest = math.inf
            for slot in self.slots:
                if len(slot.queue) and slot.dispatch.ready(slot.queue, now_ms, slot.batch):
                    arrival = slot.queue.oldest_arrival_ms()
                    if arrival is not None and arrival < oldest:
                        chosen, oldest = slot, arrival
            if chosen is None:
                return
            decision = chosen.queue.form_batch(now_ms, chosen.dispatch.batch_limit(chosen.batch))
            if len(decision.dropped):
                turn.dropped.append((chosen, decision.dropped))
            if len(decision.batch):
                turn.slot, turn.batch = chosen, decision.batch
                return

    def _steal(self, now_ms: float, turn: Turn) -> None:
        if self.steal_budget_ms <= 0 or not self.stealable:
            return
        for peer in self.peers:
            if not peer.busy:
                continue  # an idle owner takes its own work
            for slot in peer.slots:
                if slot.session not in self.stealable or len(slot.queue) == 0:
                    continue
                limit = slot.dispatch.batch_limit(slot.batch)
                if slot.queue.latency_ms(min(slot.queue.inputs, limit)) > self.steal_budget_ms:
                    continue
                decision = slot.queue.form_batch(now_ms, limit)
                if len(decision.dropped):
                    turn.dropped.append((slot, decision.dropped))
                if len(decision.batch):
                    self.batches_stolen += 1
                    turn.slot, turn.batch, turn.stolen = slot, decision.batch, True
                    return

    def wake_at(self, now_ms: float) -> float | None:
        """When an idle backend must look again although nothing arrives (a dispatch rule's timeout)."""
        best: float | None = None
        for slot in self.slots:
            if len(slot.queue):
                wake = slot.dispatch.wake_at(slot.queue, now_ms, slot.batch)
                if wake is not None and (best is None or wake < best):
                    best = max(wake, now_ms)
        return best


class Machine:
    """The backends of one machine: they see each other's queues, so they route by backlog and steal."""

    def __init__(self, backends: Sequence[BackendTurn]) -> None:
        self.backends = list(backends)
        for backend in self.backends:
            backend.peers = [b for b in self.backends if b is not backend]

    def settle(self, now_ms: float, first: BackendTurn | None = None) -> list[Turn]:
        """Let every idle backend look at the queues after a change, in the order worker threads would
        reach it: ``first`` (where the change happened), then by index, until no backend starts a batch.
        Returns every turn that started a batch or dropped requests; the caller marks the started ones
        busy (``busy`` is set here) and runs them."""
        if len(self.backends) == 1:  # a device of its own (a cluster node): one look settles it
            backend = self.backends[0]
            if backend.busy:
                return []
            turn = backend.next(now_ms)
            if turn.slot is not None:
                backend.busy = True
            return [turn] if turn.slot is not None or turn.dropped else []
        out: list[Turn] = []
        order = ([first] if first is not None else []) + [b for b in self.backends if b is not first]
        started = True
        while started:
            started = False
            for backend in order:
                if backend.busy:
                    continue
                turn = backend.next(now_ms)
                if turn.slot is not None:
                    backend.busy = True
                    started = True
                if turn.slot is not None or turn.dropped:
                    out.append(turn)
        return out
