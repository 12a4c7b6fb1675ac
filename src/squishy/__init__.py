"""squishy: serve many DNNs under latency SLOs on as few machines as possible.

The packages follow the data flow:
``profiles`` → ``scheduler`` (plan) → ``batching`` (one queue/drop policy) → ``runtime`` / ``sim``,
with ``frontend`` (API, routing) and ``control`` (rates, re-planning) on top and ``cluster`` deciding
where backends run.
"""

__version__ = "0.1.0"
