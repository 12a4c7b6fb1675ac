"""Profiles you can trust: a measurement disturbed by other work is measured again or flagged, never cached
as the machine's ℓ(b), and a cached profile is checked against a few quick batches before it is reused.

The tests that run a CPU hog assert what the profiler decided (flagged, re-measured, cached or not), never
a timing. The hog is three spinning processes per CPU this process may use, so each measuring thread waits
for a CPU most of the time (the wait rule), whatever the model's cost.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from squishy.bench.launch import start_squishy
from squishy.examples import build_examples, cnn
from squishy.profiles import profiler as profiler_module
from squishy.profiles.io import read_structured
from squishy.profiles.profile import Profile
from squishy.profiles.profiler import (
    CHECK_TOLERANCE,
    DISTURBED_GAP,
    DISTURBED_WAIT_SHARE,
    MEASURE_ATTEMPTS,
    cache_path,
    cached_profile,
    disturbance,
    measure_profile,
    write_profile,
)

QUICK = {"warmup": 2, "repeats": 10}


@contextmanager
def cpu_hog(per_cpu: int = 3) -> Iterator[None]:
    """``per_cpu`` processes spinning per CPU this process may use; always stopped on the way out."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(per_cpu * cpus):
            hogs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        _wait_until_spinning(hogs)
        yield
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()


def _wait_until_spinning(hogs: list[subprocess.Popen[bytes]], timeout_s: float = 10.0) -> None:
    """Until every hog has spent a tenth of a second on a CPU (past interpreter start-up, spinning)."""
    ticks = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            # /proc/<pid>/stat: utime is the 14th field, counted after the ")" that ends the command name.
            used = [int(Path(f"/proc/{h.pid}/stat").read_text().rsplit(")", 1)[1].split()[11]) for h in hogs]
        except (OSError, IndexError, ValueError):
            time.sleep(0.5)  # no /proc: give them time
            return
        if min(used) >= ticks / 10:
            return
        time.sleep(0.05)


@pytest.fixture
def cnn_file(tmp_path: Path) -> Path:
    """smallcnn: a real CNN costing about a millisecond at batch 8 here, more than tiny-model jitter."""
    path = tmp_path / "smallcnn" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(cnn.smallcnn_onnx(0), str(path))
    return path


# ------------------------------------------------------------------------------------------ the rule
def test_the_rule_flags_a_wide_spread_and_a_long_wait() -> None:
    quiet = [68.0, 68.5, 69.0, 68.2, 70.1, 68.9, 69.5, 68.1, 71.0, 68.4]
    assert disturbance(quiet).reason is None
    assert disturbance(quiet).score < 1
    # The measurement: some runs at the quiet speed, the others preempted (146 ms ± 56 ms).
    busy = [68.0, 70.0, 72.0, 150.0, 160.0, 170.0, 180.0, 190.0, 200.0, 210.0]
    judged = disturbance(busy)
    assert judged.score > 1
    assert judged.reason is not None and "the fastest run 68 ms" in judged.reason and "std" in judged.reason
    # Just past the gap threshold, and just within it.
    assert disturbance([10.0, 10.0 * (1 + DISTURBED_GAP) + 0.2, 20.0]).reason is not None
    assert disturbance([10.0, 10.0 * (1 + DISTURBED_GAP) - 0.2, 20.0]).reason is None
    # A tiny model's jitter is not interference: the gap is under the absolute floor.
    assert disturbance([0.01, 0.05, 0.05, 0.06]).reason is None
    # A steady hog slows every run alike; the time each run spent waiting for a CPU shows it.
    steady = [8.0, 8.0, 8.0, 8.0]
    assert disturbance(steady, waits_ms=[0.4, 0.0, 0.2, 0.1]).reason is None
    waited = disturbance(steady, waits_ms=[4.0, 4.8, 5.6, 0.0])
    assert waited.reason == "a typical run waited for a CPU 55% of its time (4.4 ms)"
    assert waited.score == pytest.approx(0.55 / DISTURBED_WAIT_SHARE)
    # One long preemption delays one run, not the typical one: the median run is still right.
    assert disturbance(steady, waits_ms=[0.0, 0.0, 0.0, 30.0]).reason is None
    assert disturbance([0.01, 0.01], waits_ms=[0.006, 0.006]).reason is None  # 6 µs a run: under the floor
    # The cleanest attempt has the lowest score.
    assert disturbance(quiet).score < disturbance(busy).score


Timing = tuple[list[float], list[float] | None]


def _fake_timings(monkeypatch: pytest.MonkeyPatch, attempts: list[Timing]) -> list[int]:
    """Replace the timed runs by ``attempts`` in turn (the last repeats); returns a log of calls."""
    calls: list[int] = []

    def fake(sessions: Any, feed: Any, warmup: int, repeats: int, on_run: Any) -> Timing:
        calls.append(len(calls))
        return attempts[min(len(calls) - 1, len(attempts) - 1)]

    monkeypatch.setattr(profiler_module, "_time_runs", fake)
    return calls


def test_a_disturbed_size_is_measured_again_and_the_cleanest_attempt_kept(
    cnn_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy: Timing = ([68.0, 70.0, 150.0, 160.0, 170.0], None)
    clean: Timing = ([68.0, 68.5, 69.0, 68.2, 70.1], [0.0] * 5)
    calls = _fake_timings(monkeypatch, [busy, clean])
    profile = measure_profile(cnn_file, batches=[8], **QUICK)
    assert len(calls) == 2  # measured again once, then clean
    assert "disturbed" not in profile.extra
    assert profile.extra["remeasured"].startswith("batch 8: median 150 ms is 2.21x the fastest run 68 ms")
    assert profile.extra["remeasured"].endswith("; measured again, attempt 2 clean")
    assert profile.batch_ms[8] == pytest.approx(np.median(clean[0]))
    assert profile.extra["statistic"] == "median"


def test_a_profile_still_disturbed_is_flagged_and_not_trusted_as_the_cache(
    cnn_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    busy: Timing = ([68.0, 70.0, 150.0, 160.0, 170.0], None)
    calls = _fake_timings(monkeypatch, [busy])
    with caplog.at_level(logging.WARNING, logger="squishy.profiles.profiler"):
        profile = cached_profile(cnn_file, model_name="smallcnn", batches=[1, 8], **QUICK)
    assert len(calls) == 2 * MEASURE_ATTEMPTS  # every size measured three times
    assert profile.extra["disturbed"].startswith("batch 1: median 150 ms is 2.21x the fastest run 68 ms")
    assert "batch 8:" in profile.extra["disturbed"]
    # Used for this run, and the cache says what it is.
    cached = json.loads(cache_path(cnn_file, 1).read_text())
    assert cached["disturbed"] == profile.extra["disturbed"]
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("smallcnn: profile disturbed by other work on this machine")
    assert "std" in warning and "next start measures again" in warning
    # The next start does not reuse it: it measures again.
    before = len(calls)
    cached_profile(cnn_file, model_name="smallcnn", batches=[1, 8], **QUICK)
    assert len(calls) > before


def test_a_profile_measured_beside_a_cpu_hog_is_measured_again_or_flagged(
    cnn_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Beside the hog, some batch size is disturbed at its first attempt (the hog gives each thread a
    fraction of a CPU, and these runs take several milliseconds). Either a later attempt came out clean
    and was kept, recorded as measured again, or the profile is flagged and so is its cache."""
    with caplog.at_level(logging.INFO, logger="squishy.profiles.profiler"), cpu_hog():
        profile = cached_profile(cnn_file, model_name="smallcnn", batches=[16, 32, 64], **QUICK)
    cached = json.loads(cache_path(cnn_file, 1).read_text())
    messages = [r.getMessage() for r in caplog.records]
    assert "disturbed" in profile.extra or "remeasured" in profile.extra, messages
    if "disturbed" in profile.extra:
        assert cached["disturbed"] == profile.extra["disturbed"]  # flagged, not cached as truth
        assert any(m.startswith("smallcnn: profile disturbed by other work") for m in messages)
    else:
        assert cached["remeasured"] == profile.extra["remeasured"]
        assert any("was disturbed (" in m and "measured again" in m for m in messages)


# ----------------------------------------------------------------------------- the check of a cache
def _plant(path: Path, model_file: Path, profile: Profile, factor: float) -> None:
    """Write ``profile`` scaled by ``factor`` as the cache, newer than the model file."""
    wrong = {b: v * factor for b, v in profile.batch_ms.items()}
    planted = Profile(
        model=profile.model,
        device=profile.device,
        batch_ms=wrong,
        std_ms=profile.std_ms,
        source="planted",
        extra={**profile.extra, "statistic": "median"},
    )
    write_profile(planted, path)
    stamp_ns = model_file.stat().st_mtime_ns + 10**9
    os.utime(path, ns=(stamp_ns, stamp_ns))


@pytest.mark.parametrize("factor", [0.1, 10.0])
def test_a_wrong_cache_is_caught_at_start_and_measured_again(
    cnn_file: Path, factor: float, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first = measure_profile(cnn_file, model_name="smallcnn", batches=[1, 8], **QUICK)
    path = cache_path(cnn_file, 1)
    _plant(path, cnn_file, first, factor)
    calls: list[object] = []
    real_measure = profiler_module.measure_profile

    def counting(*args: Any, **kwargs: Any) -> Profile:
        calls.append(kwargs["batches"])
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(profiler_module, "measure_profile", counting)
    with caplog.at_level(logging.WARNING, logger="squishy.profiles.profiler"):
        cached_profile(cnn_file, model_name="smallcnn", batches=[1, 8], **QUICK)
    assert calls == [[1, 8]]  # measured again
    assert read_structured(path)["source"] != "planted"  # and the cache replaced
    assert any("disagrees with this machine now" in r.getMessage() for r in caplog.records)


def test_the_check_compares_quick_batches_with_the_cache(cnn_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision alone, with the quick batches' result made up: within the tolerance the cache is
    reused as it is; beyond it, measured again."""
    cached = Profile.from_dict(
        {
            "model": "smallcnn",
            "device": "cpu-1t",
            "batch_ms": {"1": 2.0, "4": 5.0, "8": 9.0},
            "batches_measured": [1, 4, 8],
        }
    )
    write_profile(cached, cache_path(cnn_file, 1))
    stamp_ns = cnn_file.stat().st_mtime_ns + 10**9
    os.utime(cache_path(cnn_file, 1), ns=(stamp_ns, stamp_ns))
    probed: list[list[int]] = []
    factor = {"now": 1.0}

    def quick(model_path: Any, **kwargs: Any) -> Profile:
        probed.append(list(kwargs["batches"]))
        assert kwargs["attempts"] == 1 and kwargs["repeats"] == profiler_module.CHECK_REPEATS
        return Profile("smallcnn", "cpu-1t", {b: cached.batch_ms[b] * factor["now"] for b in kwargs["batches"]})

    measured: list[object] = []
    monkeypatch.setattr(profiler_module, "_measure_profile", quick)
    monkeypatch.setattr(profiler_module, "measure_profile", lambda *a, **k: measured.append(k) or cached)
    for now, remeasured in [(1.0, False), (CHECK_TOLERANCE * 0.9, False), (0.8, False), (1.6, True), (0.5, True)]:
        factor["now"] = now
        measured.clear()
        cached_profile(cnn_file, model_name="smallcnn", batches=[1, 4, 8])
        assert bool(measured) == remeasured, now
    assert probed[0] == [1, 8]  # the smallest and the largest size only
    # A check can be turned off, and a user's profile is never checked.
    probed.clear()
    cached_profile(cnn_file, model_name="smallcnn", batches=[1, 4, 8], check=False)
    user = cnn_file.parent / "profile.json"
    write_profile(cached, user)
    cached_profile(cnn_file, model_name="smallcnn", batches=[1, 4, 8], user_profile=user)
    assert probed == []


# ------------------------------------------------------------------------------------ at server start
def test_squishy_serve_started_beside_a_cpu_hog_measures_again_or_flags_its_profile(tmp_path: Path) -> None:
    """``squishy serve`` on a repository whose model has no profile yet, started while a hog holds every
    CPU: the start-up profile is measured again where disturbed, and flagged where it stays disturbed,
    in the log and in the cache beside the model."""
    repository = tmp_path / "repository"
    build_examples(repository, only=("smallcnn",))
    with cpu_hog():
        server = start_squishy(repository, ["--slots", "1", "--threads-per-slot", "1", "--log-level", "debug"])
    try:
        assert server.alive()
        log = "".join(server.output)
    finally:
        server.stop()
    [cache] = sorted((repository / "smallcnn").glob("*/*.profile-cache.json"))
    cached = json.loads(cache.read_text())
    assert "disturbed" in cached or "remeasured" in cached, log
    if "disturbed" in cached:
        assert "smallcnn: profile disturbed by other work on this machine" in log, log
    else:
        assert "profiling smallcnn: batch" in log and "was disturbed (" in log, log
