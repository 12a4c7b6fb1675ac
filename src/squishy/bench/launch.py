"""Start ``squishy serve`` as a separate process on free ports, for benchmarks and end-to-end tests.

The server prints the ports it bound (``--http-port 0`` picks a free one); this reads them from its
output, waits until it says it is ready, and keeps draining the output so the server never blocks.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 300.0


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of a process so far (Linux /proc): the main thread is "main", others by
    the name the OS shows (squishy names its slots ``squishy-slot-N``); threads of one name are summed."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                text = stat.read()
        except OSError:
            continue  # the thread ended meanwhile
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        key = "main" if int(tid) == pid else name
        out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def terminate(process: subprocess.Popen[Any], timeout_s: float, sig: int = signal.SIGTERM) -> None:
    """``sig`` (SIGTERM: a graceful shutdown) and wait; SIGKILL if it is not gone within ``timeout_s``."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    http_port: int
    grpc_port: int
    metrics_port: int
    output: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as reply:
            return reply.read().decode()

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu_s(self) -> float:
        """The server process's CPU time so far (Linux /proc; NaN elsewhere)."""
        return process_cpu_s(self.process.pid)

    def thread_cpu_s(self) -> dict[str, float]:
        """CPU seconds so far per thread name (see ``thread_cpu_s``)."""
        return thread_cpu_s(self.process.pid)

    def stop(self, timeout_s: float = 20.0) -> None:
        # SIGINT: stop at once (requests in flight still finish); SIGTERM would first wait out the drain
        # delay meant for load balancers, which a benchmark or test has none of.
        terminate(self.process, timeout_s, signal.SIGINT)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_squishy(repository: str | Path, extra_args: Sequence[str] = (), *, host: str = "127.0.0.1") -> ServerProcess:
    """``squishy serve --repository REPOSITORY`` on free ports; returns once it is ready."""
    command = [
        sys.executable, "-m", "squishy.cli", "serve", "--repository", str(repository), "--host", host,
        "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", *extra_args,
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    output: list[str] = []
    ports: dict[str, int] = {}
    deadline = time.monotonic() + START_TIMEOUT_S
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line)
        if match := re.search(r"OIP REST on http://[^:]+:(\d+)/v2, gRPC on [^:]+:(\d+)", line):
            ports["http"], ports["grpc"] = int(match.group(1)), int(match.group(2))
        if match := re.search(r"metrics on http://[^:]+:(\d+)/metrics", line):
            ports["metrics"] = int(match.group(1))
        if "squishy: ready" in line or "squishy: serving, but NOT READY" in line or time.monotonic() > deadline:
            break
    if not {"http", "grpc", "metrics"} <= set(ports):
        process.kill()
        process.wait()
        raise RuntimeError("squishy serve did not start:\n" + "".join(output))
    threading.Thread(target=lambda: output.extend(process.stdout or ()), daemon=True).start()
    return ServerProcess(process, ports["http"], ports["grpc"], ports["metrics"], output)
