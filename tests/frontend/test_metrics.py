"""ServerMetrics: Triton's names and squishy's own, thread-safe recording, and GET /metrics."""

from __future__ import annotations

import re
import threading

import httpx

from squishy.metrics import ServerMetrics
from squishy.scheduler.plan import Allocation, Backend, Member, Plan
from squishy.scheduler.workload import SessionKey

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def families(metrics: ServerMetrics) -> dict[str, dict[tuple, float]]:
    """sample name as on the wire → {sorted label items → value}, parsed from the exposition text."""
    out: dict[str, dict[tuple, float]] = {}
    for line in metrics.exposition().decode().splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, line
        name, labels, value = match.groups()
        out.setdefault(name, {})[tuple(sorted(_LABEL.findall(labels or "")))] = float(value)
    return out


def test_triton_names_and_types() -> None:
    metrics = ServerMetrics()
    metrics.record_request("resnet", "1", "met", 12.0)
    metrics.record_request("resnet", "1", "late", 250.0)
    metrics.record_request("resnet", "1", "dropped")
    metrics.record_request("resnet", "1", "failed")
    metrics.record_batch("resnet", "1", size=8, queue_ns_total=4_000_000, compute_ns=10_000_000, requests=2)
    metrics.set_pending("resnet", "1", 5)
    text = metrics.exposition().decode()
    for name in ("nv_inference_request_success", "nv_inference_count", "nv_inference_queue_duration_us"):
        assert f"# TYPE {name} counter\n" in text  # exact Triton names, no _total suffix
    samples = families(metrics)
    mv = (("model", "resnet"), ("version", "1"))
    assert samples["nv_inference_request_success"][mv] == 2
    assert samples["nv_inference_request_failure"][(*mv[:1], ("reason", "REJECTED"), *mv[1:])] == 1
    assert samples["nv_inference_request_failure"][(*mv[:1], ("reason", "BACKEND"), *mv[1:])] == 1
    assert samples["nv_inference_count"][mv] == 8
    assert samples["nv_inference_exec_count"][mv] == 1
    assert samples["nv_inference_request_duration_us"][mv] == 262_000
    assert samples["nv_inference_queue_duration_us"][mv] == 4_000
    assert samples["nv_inference_compute_infer_duration_us"][mv] == 20_000  # charged to both requests
    assert samples["nv_inference_pending_request_count"][mv] == 5
    assert samples["squishy_slo_met_total"][mv] == 1
    assert samples["squishy_slo_late_total"][mv] == 1
    assert samples["squishy_dropped_total"][mv] == 1
    assert samples["squishy_request_latency_ms_count"][mv] == 2
    assert samples["squishy_request_latency_ms_bucket"][(("le", "15.0"), *mv)] == 1
    assert samples["squishy_batch_size_bucket"][(("le", "8.0"), *mv)] == 1


def test_plan_and_session_rates() -> None:
    metrics = ServerMetrics()
    plan = Plan(
        backends=(
            Backend(0, 125.0, (Allocation("A", 200, 64.0, 8, 60.0, 200), Allocation("B", 250, 32.0, 4, 60.0, 250))),
            Backend(
                1,
                125.0,
                (
                    Allocation("A", 200, 16.0, 2, 30.0, 200),
                    Allocation("trunk", 300, 10.0, 4, 20.0, 300, (Member("C", 300, 6.0), Member("D", 300, 4.0))),
                ),
            ),
        ),
        lower_bound=1.5,
    )
    metrics.set_plan(plan, versions={"A": "3"})
    metrics.set_session_rates({SessionKey("A", 200): 75.5})
    samples = families(metrics)
    assert samples["squishy_plan_backends"][()] == 2
    assert samples["squishy_plan_duty_cycle_ms"][(("backend", "1"),)] == 125.0
    assert samples["squishy_plan_occupancy"][(("backend", "0"),)] == 0.96
    batch = samples["squishy_plan_batch"]
    assert batch[(("backend", "0"), ("model", "A"), ("slo_ms", "200"), ("version", "3"))] == 8
    assert batch[(("backend", "1"), ("model", "D"), ("slo_ms", "300"), ("version", ""))] == 4
    rate = samples["squishy_plan_rate"]
    assert rate[(("model", "A"), ("slo_ms", "200"), ("version", "3"))] == 80.0
    assert rate[(("model", "C"), ("slo_ms", "300"), ("version", ""))] == 6.0
    assert samples["squishy_session_rate"][(("model", "A"), ("slo_ms", "200"), ("version", ""))] == 75.5
    # A new plan replaces the old one entirely.
    metrics.set_plan(Plan(backends=(Backend(0, 50.0, (Allocation("B", 250, 32.0, 4, 40.0, 250),)),), lower_bound=0.8))
    samples = families(metrics)
    assert samples["squishy_plan_backends"][()] == 1
    assert set(samples["squishy_plan_batch"]) == {
        (("backend", "0"), ("model", "B"), ("slo_ms", "250"), ("version", ""))
    }


def test_recording_from_many_threads_loses_nothing() -> None:
    metrics = ServerMetrics()

    def work() -> None:
        for _ in range(2000):
            metrics.record_request("m", "1", "met", 3.0)
            metrics.record_batch("m", "1", size=2, queue_ns_total=1000, compute_ns=1000)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert metrics.triton_value("nv_inference_request_success", "m", "1") == 8000
    assert metrics.triton_value("nv_inference_count", "m", "1") == 16000
    assert families(metrics)["squishy_request_latency_ms_count"][(("model", "m"), ("version", "1"))] == 8000


def test_metrics_endpoint_counts_frontend_rejects(server, http_url: str) -> None:
    before = server.metrics.triton_value("nv_inference_request_failure", "affine", "1", "OTHER")
    bad = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    assert httpx.post(f"{http_url}/v2/models/affine/infer", json=bad).status_code == 400
    assert server.metrics.triton_value("nv_inference_request_failure", "affine", "1", "OTHER") == before + 1
    url = f"http://127.0.0.1:{server.ports.metrics}"
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert 'nv_inference_request_failure{model="affine",reason="OTHER",version="1"}' in response.text
    assert httpx.get(f"{url}/other").status_code == 404
    assert httpx.post(f"{url}/metrics").status_code == 405
