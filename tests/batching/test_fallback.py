"""Per-request choice under bursts in the backend turn: a costlier variant's at-risk requests move to the
cheaper variant the plan declared, on the same backend or on a peer of the same machine."""

from __future__ import annotations

from squishy.batching import DropPolicy, Item, SessionQueue
from squishy.batching.turn import BackendTurn, Machine, Slot, declare_fallbacks


def big(n: int) -> float:
    return 10.0 + 5.0 * n  # a batch of 8 takes 50 ms


def small(n: int) -> float:
    return 1.0 + 0.5 * n


def burst(queue: SessionQueue, count: int, deadline_ms: float) -> None:
    for i in range(count):
        queue.push(Item(deadline_ms=deadline_ms, arrival_ms=0.0, payload=i))


def test_a_burst_falls_back_to_the_cheaper_variant_on_a_peer_of_the_same_machine():
    costly, cheap = SessionQueue(big, DropPolicy.EARLY), SessionQueue(small, DropPolicy.EARLY)
    owner, peer = BackendTurn(0), BackendTurn(1)
    costly_slot, cheap_slot = Slot("big", costly, 8), Slot("small", cheap, 8)
    declare_fallbacks([costly_slot], [(["big", "small"], 200.0)])
    owner.assign([costly_slot])
    peer.assign([cheap_slot])
    machine = Machine([owner, peer])
    burst(costly, 40, deadline_ms=200.0)  # "big" finishes 2-3 batches of 8 in time, not 5

    turns = machine.settle(0.0, owner)

    moved = sum(len(items) for turn in turns for _, _, items in turn.fell_back)
    assert costly_slot.fallback == "small" and costly_slot.fallback_guard_ms == 20.0
    assert moved > 0 and not any(turn.dropped for turn in turns)
    assert {turn.slot.session for turn in turns if turn.slot is not None} == {"big", "small"}
    left_on_big = len(costly) + sum(len(t.batch) for t in turns if t.slot is costly_slot)
    assert left_on_big + moved == 40  # nothing lost
    assert left_on_big <= 24  # what stays: three batches of 8 (50 ms each) end before the 20 ms guard


def test_without_a_declared_fallback_the_costlier_queue_keeps_its_requests():
    costly, cheap = SessionQueue(big, DropPolicy.EARLY), SessionQueue(small, DropPolicy.EARLY)
    owner, peer = BackendTurn(0), BackendTurn(1)
    owner.assign([Slot("big", costly, 8)])
    peer.assign([Slot("small", cheap, 8)])
    burst(costly, 40, deadline_ms=200.0)
    turns = Machine([owner, peer]).settle(0.0, owner)
    assert not any(turn.fell_back for turn in turns)
    assert len(cheap) == 0
