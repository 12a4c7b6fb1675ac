"""Server processes for the benchmark: start on a free port, wait until ready, watch, stop completely.

Every server runs in its own session (``start_new_session``), so everything it starts (Ray's GCS,
raylet, workers, uvicorn's worker processes) can be found again: its resources are summed over the
process tree under it, and at stop anything left in its session is ended by pid. Nothing else on the
machine is touched.

Usage figures (Linux /proc): CPU = utime + stime of every live process in the tree (what a process
that exits mid-run used is lost, so none should); RSS = VmRSS summed (counts shared pages once per
process, so it overstates many-process servers such as Ray); PSS = Pss from smaps_rollup summed (each
shared page split between its users: the fair total).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from squishy.bench.launch import terminate

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    return text.rsplit(")", 1)[1].split()


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(pid)  # fields[1]: parent pid
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def session_members(session: int) -> list[int]:
    """Live processes whose session id is ``session`` (our own server sessions only)."""
    members = []
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is not None and int(fields[3]) == session and fields[0] != "Z":  # fields[3]: session id
            members.append(pid)
    return members


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / _CLOCK_TICKS


def memory_bytes(pids: Sequence[int]) -> tuple[int, int]:
    """(RSS, PSS) summed over ``pids``, in bytes."""
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/statm") as statm:
            rss += int(statm.read().split()[1]) * _PAGE
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
                    break
    return rss, pss


@dataclass
class Sample:
    t_s: float  # time.monotonic()
    cpu_s: float
    rss_bytes: int | None = None
    pss_bytes: int | None = None
    processes: int = 0


@dataclass
class Watcher:
    """Samples a process tree's CPU time every ``interval_s`` and its memory every ``memory_every`` samples."""

    root: int
    also: tuple[int, ...] = ()  # other trees counted with it (a Ray cluster the server drives)
    interval_s: float = 0.5
    memory_every: int = 4
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Watcher:
        self._thread = threading.Thread(target=self._loop, name="usage-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            self.sample(with_memory=n % self.memory_every == 0)
            n += 1
            self._stop.wait(self.interval_s)

    def sample(self, *, with_memory: bool = True) -> Sample:
        pids = sorted({pid for root in (self.root, *self.also) for pid in descendants(root)})
        sample = Sample(time.monotonic(), cpu_seconds(pids), processes=len(pids))
        if with_memory:
            sample.rss_bytes, sample.pss_bytes = memory_bytes(pids)
        self.samples.append(sample)
        return sample

    def window(self, start_s: float, end_s: float) -> dict[str, float | int | None]:
        """CPU share (cores) and peak memory between two monotonic times, from the samples."""
        inside = [s for s in self.samples if start_s <= s.t_s <= end_s]
        before = [s for s in self.samples if s.t_s <= start_s]
        first = before[-1] if before else (inside[0] if inside else None)
        last = inside[-1] if inside else None
        if first is None or last is None or last.t_s <= first.t_s:
            return {"cpu_cores": None, "rss_mb": None, "pss_mb": None, "processes": None}
        memory = [s for s in inside if s.rss_bytes is not None]
        return {
            "cpu_cores": (last.cpu_s - first.cpu_s) / (last.t_s - first.t_s),
            "rss_mb": max(s.rss_bytes for s in memory) / 2**20 if memory else None,  # type: ignore[type-var]
            "pss_mb": max(s.pss_bytes for s in memory) / 2**20 if memory else None,  # type: ignore[type-var]
            "processes": max(s.processes for s in inside),
        }


class Server:
    """A server process started in its own session; ``stop()`` leaves nothing of it running."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        port: int,
        ready_paths: Sequence[str],
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        start_timeout_s: float = 300.0,
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(log_path or os.devnull, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            list(command),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.session = self.process.pid  # a new session's id is its leader's pid
        try:
            deadline = time.monotonic() + start_timeout_s
            for path in ready_paths:
                self._wait_ready(path, deadline, log_path)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, path: str, deadline: float, log_path: Path | None) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
                raise RuntimeError(f"{self.name} exited with status {self.process.returncode} at start:\n{tail}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=5) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} was not ready on {self.url}{path} in time")

    def stop(self, timeout_s: float = 60.0) -> list[int]:
        """SIGTERM the server and wait (it shuts its own children down); then end by pid whatever is
        left in its session. Returns the pids that had to be ended that way."""
        terminate(self.process, timeout_s)
        stragglers = session_members(self.session)
        leftovers = list(stragglers)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while leftovers and time.monotonic() < deadline:
                time.sleep(0.2)
                leftovers = [p for p in leftovers if p in session_members(self.session)]
            if not leftovers:
                break
        self._log.close()
        return stragglers

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
