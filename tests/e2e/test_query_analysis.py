"""Query analysis while serving: an application whose fan-out comes from its requests' content, driven in
two fan-out regimes. Within an epoch or two of each, the split of its SLO in force is what the DP of
``squishy.scheduler.queries`` gives for the fan-out and rates the server measured."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest

from squishy.bench.launch import ServerProcess, start_squishy
from squishy.examples import build_examples
from squishy.profiles import Profile
from squishy.runtime.core import ServingConfig
from squishy.scheduler.queries import split_tree

pytestmark = pytest.mark.e2e

SLO_MS = 100.0
# The user's profiles (a model's own profile.json is taken as it is), so the test knows what the
# server's split starts from: a costly first stage and a cheaper one it fans out to.
PROFILES = {
    "digits": {"1": 2.0, "8": 6.0, "64": 30.0},
    "double": {"1": 1.0, "8": 3.0, "64": 12.0},
}

PIPELINE = """
import asyncio
import numpy as np

CALLS = {"digits": {"double": {}}}

async def execute(inputs, call):
    await call("digits", {"pixels": np.zeros((1, 64), np.float32)})
    count = int(inputs["count"][0])
    x = inputs["x"].reshape(1, 4)
    outputs = await asyncio.gather(*(call("double", {"x": x}) for _ in range(count)))
    return {"total": np.sum([o["y"][0] for o in outputs], axis=0).astype(np.float32)}
"""

CONFIG = f"""name: "pipeline"
platform: "squishy_application"
max_batch_size: 0
input [ {{ name: "count" data_type: TYPE_INT32 dims: [ 1 ] }}, {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "total" data_type: TYPE_FP32 dims: [ 4 ] }} ]
parameters {{ key: "slo_ms" value {{ string_value: "{SLO_MS:g}" }} }}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("queries") / "repository"
    build_examples(root, only=("digits", "double"))
    for model, table in PROFILES.items():
        (root / model / "profile.json").write_text(json.dumps({"model": model, "device": "cpu", "batch_ms": table}))
    (root / "pipeline" / "1").mkdir(parents=True)
    (root / "pipeline" / "1" / "application.py").write_text(PIPELINE)
    (root / "pipeline" / "config.pbtxt").write_text(CONFIG)
    with start_squishy(root, ["--epoch-s", "1"]) as running:
        yield running


def split_in_force(server: ServerProcess) -> tuple[dict[str, float], dict[str, float]]:
    """(budget, rate) per stage of the split in force, read from /metrics (again if read mid-update)."""
    for _ in range(5):
        text = server.metrics()
        budgets = _gauges(text, "squishy_stage_budget_ms")
        rates = _gauges(text, "squishy_stage_rate")
        if set(budgets) == {"pipeline", "digits", "double"} and sum(budgets.values()) == pytest.approx(SLO_MS):
            return budgets, rates
        time.sleep(0.1)
    raise AssertionError(f"no consistent split in /metrics: {budgets}")


def _gauges(text: str, name: str) -> dict[str, float]:
    pattern = rf'^{name}\{{composite="pipeline",stage="([^"]+)"\}} (\S+)$'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text, flags=re.MULTILINE)}


def expected_split(rates: dict[str, float]) -> dict[str, float]:
    profiles = {
        model: Profile.from_dict({"model": model, "device": "cpu", "batch_ms": table, "interpolate": True})
        for model, table in PROFILES.items()
    }
    rows = [
        ("pipeline", -1, None, rates["pipeline"]),
        ("digits", 0, profiles["digits"], rates["digits"]),
        ("double", 1, profiles["double"], rates["double"]),
    ]
    return split_tree(rows, SLO_MS, ServingConfig().settings)  # the server's margins


async def drive(server: ServerProcess, count: int, rate: float, duration_s: float) -> list[int]:
    body = {
        "inputs": [
            {"name": "count", "shape": [1], "datatype": "INT32", "data": [count]},
            {"name": "x", "shape": [4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]},
        ]
    }
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as client:
        started = time.monotonic()
        tasks = []
        for i in range(round(rate * duration_s)):
            tasks.append(asyncio.create_task(client.post("/v2/models/pipeline/infer", json=body)))
            await asyncio.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
        return [reply.status_code for reply in await asyncio.gather(*tasks)]


@pytest.mark.parametrize("count", [1, 6])
def test_the_split_in_force_is_the_dp_for_the_measured_fan_out(server: ServerProcess, count: int) -> None:
    async def regime() -> tuple[list[int], tuple[dict[str, float], dict[str, float]]]:
        load = asyncio.create_task(drive(server, count, 40.0, 5.0))
        await asyncio.sleep(3.5)  # a few epochs of this regime: the split now was made from it alone
        in_force = await asyncio.to_thread(split_in_force, server)
        return await load, in_force

    statuses, (budgets, rates) = asyncio.run(regime())
    assert statuses.count(200) >= 0.95 * len(statuses), sorted(set(statuses))
    assert rates["double"] / rates["digits"] == pytest.approx(count, rel=0.15)  # the measured fan-out
    assert budgets == pytest.approx(expected_split(rates), abs=1e-9)


def test_each_stage_is_a_session_of_its_own_at_its_budget(server: ServerProcess) -> None:
    text = server.metrics()
    pattern = r'^squishy_plan_rate\{model="double",slo_ms="([^"]+)",version="1"\}'
    slos = set(re.findall(pattern, text, flags=re.MULTILINE))
    budgets, _ = split_in_force(server)
    rates = [line for line in text.splitlines() if line.startswith("squishy_plan_rate")]
    # The stage's session, planned at the stage's budget (the plan is made again when a budget moves by
    # more than 5%, so it may have been made for a budget up to that far from the one in force).
    near = [slo for slo in slos if abs(float(slo) - budgets["double"]) <= 0.05 * budgets["double"] + 1.0]
    assert near and set(slos) - {"50"}, rates
    assert "50" in slos  # and the model's own session, at its own SLO, for its direct clients
