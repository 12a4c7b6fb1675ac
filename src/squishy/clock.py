"""Time, passed in: the serving core, the control loop and the backends read time only through a
``Clock``, so the same code runs on the wall clock (``squishy serve``), on a hand-driven clock (tests)
and in simulated time (``squishy.sim``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> float:
        """Monotonic milliseconds: deadlines, batch timings, rate windows."""
        ...

    def epoch_ms(self) -> float:
        """Wall-clock milliseconds since the Unix epoch: timestamps users read (Triton's last_inference)."""
        ...

    def sleep_ms(self, duration_ms: float) -> None:
        """Block the calling thread for ``duration_ms`` (the null executor's stand-in for work)."""
        ...

    async def pause_ms(self, duration_ms: float) -> None:
        """Let ``duration_ms`` pass on an event loop (the control loop's tick)."""
        ...


class MonotonicClock:
    """The machine's clocks: ``time.monotonic`` (what the frontends stamp arrivals with) and ``time.time``."""

    def now_ms(self) -> float:
        return time.monotonic() * 1000.0

    def epoch_ms(self) -> float:
        return time.time() * 1000.0

    def sleep_ms(self, duration_ms: float) -> None:
        time.sleep(duration_ms / 1000.0)

    async def pause_ms(self, duration_ms: float) -> None:
        await asyncio.sleep(duration_ms / 1000.0)


class ManualClock:
    """A clock that moves only when told to: ``advance_ms`` / ``set_ms`` (and ``sleep_ms`` advances it)."""

    def __init__(self, start_ms: float = 0.0, epoch_offset_ms: float = 1.7e12) -> None:
        self._now_ms = start_ms
        self._epoch_offset_ms = epoch_offset_ms

    def now_ms(self) -> float:
        return self._now_ms

    def epoch_ms(self) -> float:
        return self._now_ms + self._epoch_offset_ms

    def sleep_ms(self, duration_ms: float) -> None:
        self.advance_ms(duration_ms)

    async def pause_ms(self, duration_ms: float) -> None:
        self.advance_ms(duration_ms)

    def advance_ms(self, duration_ms: float) -> None:
        if duration_ms < 0:
            raise ValueError("a clock cannot go back")
        self._now_ms += duration_ms

    def set_ms(self, now_ms: float) -> None:
        if now_ms < self._now_ms:
            raise ValueError(f"a clock cannot go back ({now_ms} < {self._now_ms})")
        self._now_ms = now_ms


SYSTEM_CLOCK = MonotonicClock()
