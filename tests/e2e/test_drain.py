"""SIGTERM drains ``squishy serve``: readiness turns false first, requests keep being served through the
drain delay and those in flight finish, and a rolling restart of two servers behind a load balancer that
follows readiness loses no request."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from squishy.bench.launch import ServerProcess, start_squishy
from squishy.examples import build_examples

pytestmark = pytest.mark.e2e

DRAIN_DELAY_S = 1.5
POLL_S = 0.1  # how often the balancer asks each server whether it is ready
RATE_PER_S = 50.0
SERVER_ARGS = ["--slots", "1", "--drain-delay-s", str(DRAIN_DELAY_S), "--grace-s", "5"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("drain") / "repository"
    build_examples(root, only=("digits",))
    return root


def _body() -> dict[str, object]:
    pixels = load_digits().data[:1].astype(np.float32)
    return {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": pixels.ravel().tolist()}]}


def test_sigterm_turns_unready_first_serves_through_the_delay_and_exits_cleanly(repository: Path):
    server = start_squishy(repository, SERVER_ARGS)
    try:
        with httpx.Client(base_url=server.http_url, timeout=10.0) as client:
            assert client.get("/v2/health/ready").status_code == 200
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            # Readiness is false within a poll, while inference is still answered.
            deadline = signalled + 1.0
            while client.get("/v2/health/ready").status_code == 200:
                assert time.monotonic() < deadline, "readiness did not turn false after SIGTERM"
                time.sleep(0.02)
            served = [client.post("/v2/models/digits/infer", json=_body()).status_code for _ in range(20)]
            assert time.monotonic() - signalled < DRAIN_DELAY_S
            assert served == [200] * 20
            live = client.get("/v2/health/live")
            assert live.status_code == 200  # live, not ready: no orchestrator kills a draining server
        assert server.process.wait(timeout=DRAIN_DELAY_S + 15) == 0
        assert time.monotonic() - signalled >= DRAIN_DELAY_S
        assert "SIGTERM: not ready" in "".join(server.output)
    finally:
        server.stop()


@dataclass
class Balancer:
    """What a Kubernetes Service does with readiness: send only to servers that answer ready (as last
    polled), round robin."""

    servers: dict[str, ServerProcess] = field(default_factory=dict)
    ready: set[str] = field(default_factory=set)
    unready_seen: set[str] = field(default_factory=set)  # servers seen answering 503 to readiness
    order: itertools.count = field(default_factory=itertools.count)

    async def poll(self, client: httpx.AsyncClient) -> None:
        while True:
            for name, server in list(self.servers.items()):
                try:
                    reply = await client.get(f"{server.http_url}/v2/health/ready", timeout=1.0)
                    ok = reply.status_code == 200
                    if not ok:
                        self.unready_seen.add(name)
                except httpx.TransportError:
                    ok = False
                (self.ready.add if ok else self.ready.discard)(name)
            await asyncio.sleep(POLL_S)

    def pick(self) -> ServerProcess | None:
        names = sorted(self.ready)
        return self.servers[names[next(self.order) % len(names)]] if names else None


async def _rolling_restart(repository: Path) -> tuple[list[tuple[str, int | str]], Balancer, list[int]]:
    balancer = Balancer()
    for name in ("a", "b"):
        balancer.servers[name] = await asyncio.to_thread(start_squishy, repository, SERVER_ARGS)
    exit_codes: list[int] = []
    outcomes: list[tuple[str, int | str]] = []
    body = _body()
    stop = asyncio.Event()

    async def send(client: httpx.AsyncClient) -> None:
        calls = []

        async def call(server: ServerProcess) -> tuple[str, int | str]:
            try:
                reply = await client.post(f"{server.http_url}/v2/models/digits/infer", json=body)
                return server.http_url, reply.status_code
            except httpx.HTTPError as exc:
                return server.http_url, f"{type(exc).__name__}: {exc}"

        loop = asyncio.get_running_loop()
        start = loop.time()
        for index in itertools.count():
            if stop.is_set():
                break
            await asyncio.sleep(max(0.0, start + index / RATE_PER_S - loop.time()))
            server = balancer.pick()
            if server is None:
                outcomes.append(("-", "no ready server"))
                continue
            calls.append(asyncio.ensure_future(call(server)))
        outcomes.extend(await asyncio.gather(*calls))

    async def restart(name: str) -> None:
        old = balancer.servers[name]
        old.process.send_signal(signal.SIGTERM)
        exit_codes.append(await asyncio.to_thread(old.process.wait, 30))
        balancer.servers[f"{name}'"] = await asyncio.to_thread(start_squishy, repository, SERVER_ARGS)
        del balancer.servers[name]
        while f"{name}'" not in balancer.ready:
            await asyncio.sleep(POLL_S)

    async with httpx.AsyncClient(timeout=10.0) as client:
        poller = asyncio.ensure_future(balancer.poll(client))
        while len(balancer.ready) < 2:
            await asyncio.sleep(POLL_S)
        sender = asyncio.ensure_future(send(client))
        try:
            await asyncio.sleep(1.0)
            await restart("a")
            await restart("b")
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            await sender
            poller.cancel()
            for server in balancer.servers.values():
                await asyncio.to_thread(server.stop)
    return outcomes, balancer, exit_codes


def test_a_rolling_restart_behind_a_readiness_balancer_loses_no_request(repository: Path):
    outcomes, balancer, exit_codes = asyncio.run(_rolling_restart(repository))
    failures = [outcome for outcome in outcomes if outcome[1] != 200]
    assert len(outcomes) > 100
    assert not failures, failures[:5]
    assert exit_codes == [0, 0]  # each drained server exited by itself, cleanly
    assert {"a", "b"} <= balancer.unready_seen  # each said it was unready before it went away
    served_by = {url for url, _ in outcomes}
    assert len(served_by) == 4  # both originals and both replacements served
