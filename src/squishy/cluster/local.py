"""Where backends run on one machine: how many execution slots, and how many threads each owns.

A "GPU" of the plan is an execution slot here: a worker thread whose executors use a fixed number of
intra-op threads. Slots × threads should not exceed the cores, or slots slow each other down and the
profiles (measured with that many threads) stop being true.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from squishy.errors import SquishyError


@dataclass(frozen=True)
class SlotLayout:
    slots: int  # backends the plan may use
    threads_per_slot: int  # intra-op threads of every executor on a slot


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def slot_layout(slots: int | None = None, threads_per_slot: int | None = None, cores: int | None = None) -> SlotLayout:
    """Default: one slot per core, one thread each. Given one of the two, the other fills the cores."""
    cores = cores or available_cores()
    if slots is not None and slots < 1:
        raise SquishyError(f"--slots must be at least 1, got {slots}")
    if threads_per_slot is not None and threads_per_slot < 1:
        raise SquishyError(f"--threads-per-slot must be at least 1, got {threads_per_slot}")
    if slots is None and threads_per_slot is None:
        return SlotLayout(cores, 1)
    if slots is None:
        return SlotLayout(max(1, cores // threads_per_slot), threads_per_slot)
    if threads_per_slot is None:
        return SlotLayout(slots, max(1, cores // slots))
    return SlotLayout(slots, threads_per_slot)
