"""The per-request record of a run: when each request was due, sent and answered, and how.

``Records`` is what the clients write into during a run: plain Python lists indexed by request, because
that is the cheapest thing to store into from an event-loop callback. ``RequestLog`` is the finished
record as numpy arrays, times relative to the start of the run.

A status is the HTTP status of the reply (gRPC codes are mapped to their HTTP equivalents), or one of
``NO_REPLY`` (nothing came back by the end of the run) and ``CONNECTION_ERROR`` (the connection could
not be opened or broke with the request on it).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

STATUS_OK = 200
STATUS_DROPPED = 503
NO_REPLY = -1
CONNECTION_ERROR = -2


def status_name(status: int) -> str:
    if status == NO_REPLY:
        return "no reply"
    if status == CONNECTION_ERROR:
        return "connection error"
    return str(status)


class Records:
    """Filled in by a client while requests go out and come back; knows when the run is over.

    ``stop_after_bad`` makes the run end early once more than that many counted requests (those in the
    measured window) have failed their SLO: the search uses it to cut an overloaded step short.
    """

    def __init__(
        self,
        offsets_s: Sequence[float],  # when each request is due, from the run's origin
        model_index: Sequence[int],
        slo_s_by_model: Sequence[float],
        counted: Sequence[bool],
        *,
        stop_after_bad: int | None = None,
    ) -> None:
        n = len(offsets_s)
        self._offsets_s = list(offsets_s)
        self._slo_s_by_model = list(slo_s_by_model)
        self.model_index = list(model_index)
        self._counted = list(counted)
        self.origin_s = math.nan
        self.scheduled_s: list[float] = []  # absolute, time.perf_counter() clock: set by start()
        self._deadline_s: list[float] = []
        self.send_s = [math.nan] * n
        self.reply_s = [math.nan] * n
        self.status = [NO_REPLY] * n
        self.completed = 0
        self.bad_counted = 0
        self._stop_after_bad = stop_after_bad
        self.error_messages: dict[int, str] = {}  # first message seen for each non-200 status
        self.finished = asyncio.Event()  # every request answered, or the run was cut short
        self.cut_short = False
        self._overdue: list[int] = []
        self._overdue_cursor = 0
        if n == 0:
            self.finished.set()

    def start(self, origin_s: float) -> None:
        """Fix the run's origin on the perf_counter clock: from here on requests fall due."""
        self.origin_s = origin_s
        self.scheduled_s = [origin_s + t for t in self._offsets_s]
        # Per request, so the completion path does one list lookup instead of two.
        slo_s = self._slo_s_by_model
        self._deadline_s = [t + slo_s[m] for t, m in zip(self.scheduled_s, self.model_index, strict=True)]

    def __len__(self) -> int:
        return len(self._offsets_s)

    def complete(self, index: int, reply_s: float, status: int) -> None:
        self.reply_s[index] = reply_s
        self.status[index] = status
        self.completed += 1
        if (status != STATUS_OK or reply_s > self._deadline_s[index]) and self._counted[index]:
            self.bad_counted += 1
            if self._stop_after_bad is not None and self.bad_counted > self._stop_after_bad:
                self.cut_short = True
                self.finished.set()
        if self.completed == len(self._offsets_s):
            self.finished.set()

    def check_overdue(self, now_s: float) -> None:
        """Count, toward ``stop_after_bad``, counted requests still unanswered past their SLO.

        They are bad whatever comes back, and without this a run whose replies have stopped coming
        (the server or the generator swamped) could never be cut short.
        """
        if self._stop_after_bad is None or self.cut_short:
            return
        cursor = self._overdue_cursor
        while cursor < len(self._deadline_s) and self._deadline_s[cursor] < now_s:
            if self.status[cursor] == NO_REPLY and self._counted[cursor]:
                self._overdue.append(cursor)
            cursor += 1
        self._overdue_cursor = cursor
        # Those answered since were counted by complete() if bad: keep only the still unanswered.
        self._overdue = [i for i in self._overdue if self.status[i] == NO_REPLY]
        if self.bad_counted + len(self._overdue) > self._stop_after_bad:
            self.cut_short = True
            self.finished.set()

    def note_error(self, status: int, message: str) -> None:
        if status not in self.error_messages:
            self.error_messages[status] = message[:500]

    def to_log(self) -> RequestLog:
        def relative(values: Sequence[float]) -> np.ndarray:
            return np.asarray(values, dtype=np.float64) - self.origin_s

        return RequestLog(
            model_index=np.asarray(self.model_index, dtype=np.int32),
            scheduled_s=np.asarray(self._offsets_s, dtype=np.float64),
            send_s=relative(self.send_s),
            reply_s=relative(self.reply_s),
            status=np.asarray(self.status, dtype=np.int32),
        )


@dataclass(frozen=True)
class RequestLog:
    """Every request of a run, in schedule order. Times in s from the run's start; NaN: never happened."""

    model_index: np.ndarray  # int32, index into the run's models
    scheduled_s: np.ndarray  # when it was due (latency is measured from here)
    send_s: np.ndarray  # when it went on the wire (later than due if the generator lagged or it queued)
    reply_s: np.ndarray  # when its reply had fully arrived
    status: np.ndarray  # int32: HTTP status, NO_REPLY or CONNECTION_ERROR

    def __len__(self) -> int:
        return len(self.scheduled_s)

    @property
    def latency_ms(self) -> np.ndarray:
        """Reply time minus *scheduled* time (no coordinated omission); NaN where no reply came."""
        return (self.reply_s - self.scheduled_s) * 1000.0

    @property
    def send_lag_ms(self) -> np.ndarray:
        """How late each request went out: the generator's own lag plus any wait for a free connection."""
        return (self.send_s - self.scheduled_s) * 1000.0

    def met_slo(self, slo_ms_by_model: Sequence[float]) -> np.ndarray:
        slo_ms = np.asarray(slo_ms_by_model, dtype=np.float64)[self.model_index]
        with np.errstate(invalid="ignore"):
            return (self.status == STATUS_OK) & (self.latency_ms <= slo_ms)

    def to_rows(self, models: Sequence[str], slo_ms_by_model: Sequence[float]) -> list[dict[str, object]]:
        met = self.met_slo(slo_ms_by_model)

        def ms(values: np.ndarray, i: int) -> float | None:
            return None if math.isnan(values[i]) else round(float(values[i]) * 1000.0, 3)

        return [
            {
                "model": models[int(self.model_index[i])],
                "scheduled_ms": ms(self.scheduled_s, i),
                "sent_ms": ms(self.send_s, i),
                "reply_ms": ms(self.reply_s, i),
                "status": int(self.status[i]),
                "met_slo": bool(met[i]),
            }
            for i in range(len(self))
        ]
