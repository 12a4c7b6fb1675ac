"""The backend's batching policy, in one place: per-session deadline-ordered queues, batch formation,
early/lazy drop, and the dispatch rules of squishy and of the baselines. Used by ``runtime`` and ``sim``."""

from squishy.batching.policies import ClipperDispatch, Dispatch, SquishyDispatch, TfServingDispatch
from squishy.batching.queue import (
    ArraySessionQueue,
    BatchDecision,
    DropPolicy,
    Item,
    SessionQueue,
    early_drop_window,
    latency_table,
    lazy_drop_start,
    window_length,
)

__all__ = [
    "ArraySessionQueue",
    "BatchDecision",
    "ClipperDispatch",
    "Dispatch",
    "DropPolicy",
    "Item",
    "SessionQueue",
    "SquishyDispatch",
    "TfServingDispatch",
    "early_drop_window",
    "latency_table",
    "lazy_drop_start",
    "window_length",
]
