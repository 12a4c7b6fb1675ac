"""Faults inside one server, on a real ``squishy serve`` with real clients: a model that raises on some
inputs, one that hangs, a load that fails halfway, an unload and a new version under load. Each time the
requests concerned get one clear error within their deadline, nothing hangs, and the other model keeps
serving every request."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from squishy.bench.launch import ServerProcess, start_squishy
from squishy.examples import build_examples

from .faulty import HANG, TABLE, WIDTH, faulty_onnx, write_model
from .test_load import counter_sum, plan_batches

pytestmark = pytest.mark.e2e

FAULTY_SLO_MS = 200.0
BUSY_TRIPS = 3000.0  # loop iterations: a few ms a batch here, far from a hang and within every SLO
CLIENT_TIMEOUT_S = 10.0
OTHERS_LATE_SHARE = 0.01  # far beyond every deadline here: a request that takes it has hung


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "built"
    build_examples(root, only=("double",))
    write_model(root, "faulty", faulty_onnx(), FAULTY_SLO_MS)
    write_model(root / "spare", "broken", faulty_onnx(offset=TABLE), FAULTY_SLO_MS)
    return root


@pytest.fixture()
def server(built: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    repository = tmp_path / "repository"
    shutil.copytree(built, repository, ignore=shutil.ignore_patterns("spare"))
    with start_squishy(repository, ["--model-control", "explicit", "--epoch-s", "1"]) as running:
        running.repository = repository  # type: ignore[attr-defined]
        yield running


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict
    took_s: float


def rows(n: int, column0: float = 0.5, column1: float = 0.5) -> list[list[float]]:
    return [[column0, column1, 0.25, 0.125] for _ in range(n)]


async def infer(client: httpx.AsyncClient, model: str, x: list[list[float]], version: str = "") -> Reply:
    path = f"/v2/models/{model}/versions/{version}/infer" if version else f"/v2/models/{model}/infer"
    body = {"inputs": [{"name": "x", "shape": [len(x), WIDTH], "datatype": "FP32", "data": x}]}
    started = time.monotonic()
    try:
        reply = await client.post(path, json=body)
    except httpx.TimeoutException:
        return Reply(0, {"error": "no reply"}, time.monotonic() - started)
    return Reply(reply.status_code, reply.json(), time.monotonic() - started)


async def steady(client: httpx.AsyncClient, model: str, rate: float, duration_s: float, **kwargs: str) -> list[Reply]:
    """Open-loop requests at ``rate`` per second for ``duration_s``; every reply."""
    started = time.monotonic()
    tasks = []
    for i in range(round(rate * duration_s)):
        tasks.append(asyncio.create_task(infer(client, model, rows(1), **kwargs)))
        await asyncio.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
    return list(await asyncio.gather(*tasks))


def client_for(server: ServerProcess) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    return httpx.AsyncClient(base_url=server.http_url, timeout=CLIENT_TIMEOUT_S, limits=limits)


def all_served(replies: list[Reply], late_share: float = 0.0) -> bool:
    """Every reply a result; ``late_share``: at most that share may be deadline refusals (503), which a
    machine shared with other work can cause at a 50 ms SLO, whatever the fault."""
    failed = [(r.status, r.body.get("error"), round(r.took_s * 1000)) for r in replies if r.status != 200]
    late = [f for f in failed if f[0] == 503 and "deadline" in str(f[1])]
    assert len(failed) == len(late) and len(late) <= late_share * len(replies), (
        f"{len(failed)} of {len(replies)} failed, e.g. {failed[:3]}"
    )
    served = [r for r in replies if r.status == 200]
    return all(np.allclose(r.body["outputs"][0]["data"], np.asarray(rows(1)).ravel() * 2) for r in served)


def states(server: ServerProcess) -> dict[str, dict]:
    return {m["name"]: m for m in httpx.post(f"{server.http_url}/v2/repository/index", json={}).json()}


def planned_batch(server: ServerProcess, model: str) -> float:
    batches = [b for key, b in plan_batches(server.metrics()).items() if f'model="{model}"' in key]
    return max(batches, default=0.0)


def test_an_input_that_makes_the_model_raise_fails_only_its_own_request(server: ServerProcess) -> None:
    def retries() -> float:
        return counter_sum(server.metrics(), "squishy_batch_retries_total", model="faulty")

    async def burst(client: httpx.AsyncClient) -> list[tuple[float, Reply]]:
        """66 requests at once, a bad one in eleven, each looping ``BUSY_TRIPS`` times: every batch then takes
        a few ms, so requests queue behind each other and bad ones share batches with good ones."""
        column0 = [99.0 if i % 11 == 5 else float(i % 8) for i in range(66)]
        # Open a connection per request first: new connections would trickle in too slowly to queue.
        warm = await asyncio.gather(*(infer(client, "faulty", rows(1)) for _ in column0))
        assert {r.status for r in warm} == {200}
        replies = await asyncio.gather(*(infer(client, "faulty", rows(1, c, BUSY_TRIPS)) for c in column0))
        return list(zip(column0, replies, strict=True))

    async def scenario() -> tuple[list[tuple[float, Reply]], list[Reply]]:
        async with client_for(server) as client:
            others = asyncio.create_task(steady(client, "double", 100.0, 8.0))
            # Load enough that the plan gives the model batches of several requests.
            for _ in range(10):
                await steady(client, "faulty", 400.0, 1.0)
                if planned_batch(server, "faulty") >= 4:
                    break
            assert planned_batch(server, "faulty") >= 4
            sent: list[tuple[float, Reply]] = []
            for _ in range(5):  # until a bad request has shared a batch (the retry counter says so)
                sent += await burst(client)
                if retries() >= 1:
                    break
            return sent, await others

    sent, others = asyncio.run(scenario())
    bad = [reply for column0, reply in sent if column0 >= 16]
    good = [(column0, reply) for column0, reply in sent if column0 < 16]
    assert {r.status for r in bad} == {500}
    assert all("indices element out of data bounds" in r.body["error"] for r in bad), bad[0].body
    assert [r.status for _, r in good] == [200] * len(good)
    for column0, reply in good:
        assert np.allclose(reply.body["outputs"][0]["data"], np.asarray(rows(1, column0, BUSY_TRIPS)).ravel() * 2)
    assert all_served(others, OTHERS_LATE_SHARE)
    # The good requests passed because their batches were retried one by one, not because none was shared.
    assert retries() >= 1


def test_a_model_that_hangs_is_given_up_on_while_the_others_keep_serving(server: ServerProcess) -> None:
    async def scenario() -> tuple[Reply, list[Reply], list[Reply]]:
        async with client_for(server) as client:
            others = asyncio.create_task(steady(client, "double", 100.0, 4.0))
            await asyncio.sleep(0.5)
            hung = await infer(client, "faulty", rows(1, column1=HANG))
            await asyncio.sleep(2.0)  # past the watchdog's bound (1 s)
            after = [await infer(client, "faulty", rows(1)) for _ in range(3)]
            return hung, after, await others

    hung, after, others = asyncio.run(scenario())
    # Answered at its deadline (with slack for the client's own event loop), not when the run gave up.
    assert hung.status == 503 and "did not finish within its 200 ms deadline" in hung.body["error"], hung
    assert hung.took_s < 1.0
    state = states(server)["faulty"]
    assert state["state"] == "UNAVAILABLE" and "load the model again" in state["reason"], state
    for reply in after:
        assert reply.status in (400, 503) and "faulty" in reply.body["error"], reply
    assert all_served(others, OTHERS_LATE_SHARE), [r for r in others if r.status != 200][:3]
    assert counter_sum(server.metrics(), "squishy_hung_batches_total", model="faulty") == 1
    # Loading it again serves it again.
    assert httpx.post(f"{server.http_url}/v2/repository/models/faulty/load", json={}).status_code == 200
    assert asyncio.run(_one(server, "faulty")).status == 200
    assert server.alive()


async def _one(server: ServerProcess, model: str, **kwargs: str) -> Reply:
    async with client_for(server) as client:
        return await infer(client, model, rows(1), **kwargs)


def test_a_load_that_fails_halfway_is_one_clear_error_and_the_others_keep_serving(
    server: ServerProcess, built: Path
) -> None:
    # Its file is read and its session created; then every run raises, so it cannot be profiled.
    shutil.copytree(built / "spare" / "broken", server.repository / "broken")  # type: ignore[attr-defined]

    async def scenario() -> tuple[httpx.Response, list[Reply]]:
        async with client_for(server) as client:
            others = asyncio.create_task(steady(client, "double", 100.0, 3.0))
            await asyncio.sleep(0.5)
            loaded = await client.post("/v2/repository/models/broken/load", json={})
            return loaded, await others

    loaded, others = asyncio.run(scenario())
    assert loaded.status_code == 400, loaded.text
    assert "failed to load 'broken'" in loaded.json()["error"], loaded.text
    state = states(server)["broken"]
    assert state["state"] == "UNAVAILABLE" and state["reason"], state
    reply = asyncio.run(_one(server, "broken"))
    assert reply.status in (400, 503) and "broken" in reply.body["error"], reply
    assert all_served(others, OTHERS_LATE_SHARE)
    assert httpx.get(f"{server.http_url}/v2/models/faulty/ready").status_code == 200


def test_unloading_under_load_answers_every_request_once(server: ServerProcess) -> None:
    async def scenario() -> tuple[list[Reply], list[Reply], httpx.Response]:
        async with client_for(server) as client:
            flood = asyncio.create_task(steady(client, "faulty", 150.0, 3.0))
            others = asyncio.create_task(steady(client, "double", 100.0, 3.0))
            await asyncio.sleep(1.0)
            unloaded = await client.post("/v2/repository/models/faulty/unload", json={})
            return await flood, await others, unloaded

    flood, others, unloaded = asyncio.run(scenario())
    assert unloaded.status_code == 200
    assert {r.status for r in flood} <= {200, 400, 503}, {r.status for r in flood}  # 0 would be no reply
    served = [r for r in flood if r.status == 200]
    refused = [r for r in flood if r.status != 200]
    assert served and refused  # it served before the unload and refused after
    assert all("faulty" in r.body["error"] for r in refused)
    assert all(r.took_s < 1.0 for r in refused)
    assert all_served(others, OTHERS_LATE_SHARE)


def test_loading_a_new_version_under_load_loses_no_request(server: ServerProcess) -> None:
    model_dir = server.repository / "faulty"  # type: ignore[attr-defined]

    async def scenario() -> tuple[list[Reply], httpx.Response]:
        async with client_for(server) as client:
            flood = asyncio.create_task(steady(client, "faulty", 100.0, 5.0))
            await asyncio.sleep(1.0)
            # A new file, so its profile is measured (seconds) while version 1 keeps serving.
            write_model(model_dir.parent, "faulty", faulty_onnx(), FAULTY_SLO_MS, version=2)
            loaded = await client.post("/v2/repository/models/faulty/load", json={})
            return await flood, loaded

    flood, loaded = asyncio.run(scenario())
    assert loaded.status_code == 200, loaded.text
    assert all_served(flood), sorted({(r.status, r.body.get("error", "")) for r in flood if r.status != 200})[:3]
    versions = [r.body["model_version"] for r in flood]
    assert versions[0] == "1" and versions[-1] == "2", versions
