"""Runs against squishy's real frontend: outcomes classified, latency from the schedule, load never capped.

The test service answers after ``delay_ms`` (a request parameter) and fails on ``fail`` = unavailable
(503) or internal (500); a malformed shape gets the frontend's 400.
"""

from __future__ import annotations

import numpy as np
import pytest

from squishy.bench import NO_REPLY, Arrivals, BenchConfig, InputSpec, ModelLoad, run

PROTOCOLS = ["http", "grpc"]


def config_for(protocol: str, http_url: str, grpc_url: str, *models: ModelLoad, **kwargs: object) -> BenchConfig:
    settings: dict[str, object] = {"arrivals": Arrivals.uniform(), "duration_s": 0.4, "warmup_s": 0.1, "seed": 3}
    settings.update(kwargs)
    return BenchConfig(models=models, url=http_url, grpc_url=grpc_url, protocol=protocol, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_outcomes_are_met_late_dropped_or_errors(protocol: str, http_url: str, grpc_url: str) -> None:
    # The test service has two models; a mix of four "models" needs four names, so each outcome gets
    # its own run over the same server, and the mix is checked with the two real models below.
    cases = {
        "met": ModelLoad("affine", 40, slo_ms=2000),
        "late": ModelLoad("affine", 40, slo_ms=10, parameters={"delay_ms": 40}),
        "dropped": ModelLoad("affine", 40, slo_ms=2000, parameters={"fail": "unavailable"}),
        "error": ModelLoad("affine", 40, slo_ms=2000, inputs=(InputSpec("x", (1, 5)),)),
    }
    stats = {}
    for name, load in cases.items():
        result = run(config_for(protocol, http_url, grpc_url, load))
        stats[name] = result.per_model["affine"]
        assert stats[name].sent > 0
        if name == "error":
            assert set(result.error_messages) == {400}
            assert "shape" in result.error_messages[400]
    met, late, dropped, error = stats["met"], stats["late"], stats["dropped"], stats["error"]
    assert met.met == met.sent and met.bad_rate == 0
    assert late.ok == late.sent and late.late == late.sent and late.goodput_per_s == 0
    assert late.p50_ms >= 40  # the server's own delay, at least
    assert dropped.dropped == dropped.sent and dropped.status_counts == {503: dropped.sent}
    assert error.errors == error.sent and error.status_counts == {400: error.sent} and error.bad_rate == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_mix_reports_each_model_and_the_whole(protocol: str, http_url: str, grpc_url: str) -> None:
    config = config_for(
        protocol,
        http_url,
        grpc_url,
        ModelLoad("affine", 60, slo_ms=2000),
        ModelLoad("echo", 20, slo_ms=2000, inputs=(InputSpec("text", (2,)),), parameters={"fail": "internal"}),
    )
    result = run(config)
    affine, echo = result.per_model["affine"], result.per_model["echo"]
    assert affine.met == affine.sent > echo.sent > 0
    assert echo.status_counts == {500: echo.sent}
    assert result.overall.sent == affine.sent + echo.sent
    assert result.overall.bad_rate == pytest.approx(echo.sent / result.overall.sent)
    # Warm-up requests were sent and answered, but not counted.
    assert len(result.log) > result.overall.sent and np.all(result.log.status != NO_REPLY)
    assert result.generator.cpu_s > 0 and result.generator.wall_s > 0


def test_latency_counts_from_the_schedule_even_when_the_send_is_late(http_url: str, grpc_url: str) -> None:
    # One connection, three requests due 10 ms apart, each answered after 100 ms: the second and third
    # wait here for the connection, and that wait is part of their latency.
    config = config_for(
        "http",
        http_url,
        grpc_url,
        ModelLoad("affine", 100, slo_ms=150, parameters={"delay_ms": 100}),
        arrivals=Arrivals.trace([0.0, 0.01, 0.02]),
        duration_s=0.03,
        warmup_s=0.0,
        initial_connections=1,
        max_connections=1,
    )
    result = run(config)
    log = result.log
    assert len(log) == 3 and list(log.status) == [200, 200, 200]
    assert np.allclose(log.scheduled_s, [0.0, 0.01, 0.02])
    assert log.send_s[1] >= log.reply_s[0] and log.send_s[2] >= log.reply_s[1]
    assert np.allclose(log.latency_ms, (log.reply_s - log.scheduled_s) * 1000)
    assert log.latency_ms[1] >= 190 and log.latency_ms[2] >= 280  # 2 and 3 service times, less the offsets
    assert (log.reply_s[2] - log.send_s[2]) * 1000 < log.latency_ms[2]
    assert list(log.met_slo([150])) == [True, False, False]
    assert result.overall.late == 2


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_requests_go_out_when_due_without_waiting_for_replies(protocol: str, http_url: str, grpc_url: str) -> None:
    # Twenty requests due within 100 ms, each answered after 300 ms: an open-loop generator has sent
    # them all before the first reply, opening connections beyond the two it started with.
    config = config_for(
        protocol,
        http_url,
        grpc_url,
        ModelLoad("affine", 200, slo_ms=2000, parameters={"delay_ms": 300}),
        duration_s=0.1,
        warmup_s=0.0,
        initial_connections=2,
    )
    result = run(config)
    log = result.log
    assert len(log) == 20 and np.all(log.status == 200)
    assert log.send_s.max() < log.reply_s.min()
    if protocol == "http":
        assert result.peak_connections >= 15


def test_a_run_stops_early_once_the_target_is_out_of_reach(http_url: str, grpc_url: str) -> None:
    config = config_for(
        "http", http_url, grpc_url, ModelLoad("affine", 100, slo_ms=2000, parameters={"fail": "unavailable"})
    )
    result = run(config, stop_below_met_fraction=0.99)
    assert result.cut_short and not result.passed()
    assert result.overall.dropped < result.overall.sent  # the rest were never sent or never answered


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_run_whose_replies_stopped_coming_is_cut_short_too(protocol: str, http_url: str, grpc_url: str) -> None:
    # Nothing comes back within the SLO (the server holds each request 2 s): requests past their SLO
    # without an answer count against the target before any reply arrives.
    config = config_for(
        protocol, http_url, grpc_url, ModelLoad("affine", 100, slo_ms=20, parameters={"delay_ms": 2000})
    )
    result = run(config, stop_below_met_fraction=0.99)
    assert result.cut_short and result.overall.met == 0
    assert result.overall.no_reply > 0
