"""The router's bulk form, as the simulator uses it (the server's per-request form is in
tests/control/test_control.py; the arrival tests are in tests/test_arrivals.py)."""

from __future__ import annotations

import numpy as np
import pytest

from squishy.routing import DeficitRoundRobin, split_by_target


@pytest.mark.parametrize("weights", [[1.0], [3.0, 1.0], [0.2, 5.0, 1.7, 0.01]])
def test_deficit_round_robin_follows_weights(weights):
    drr = DeficitRoundRobin(list(range(len(weights))), weights)
    chosen = np.concatenate([drr.take(n) for n in (1, 7, 500, 3, 10_000)])
    shares = np.asarray(weights) / sum(weights)
    for count in (100, 5_000, len(chosen)):
        sent = np.bincount(chosen[:count], minlength=len(weights))
        assert np.all(np.abs(sent - shares * count) <= 2 + 0.002 * count)
    parts = split_by_target(chosen, len(weights))
    assert sum(len(p) for p in parts) == len(chosen)
