"""Where the host CPU goes while ``squishy serve`` runs a real model: per thread group, per request.

    .venv/bin/python benchmarks/bench_host_cpu.py [--model resnet18-half] [--rates 100,157] [--duration 20]
    .venv/bin/python benchmarks/bench_host_cpu.py --twin   # the twin's goodput with these costs instead

A fresh server (ONNX Runtime, the default slots) on a repository holding only ``--model`` (copied from
``examples/repository``) is driven by ``squishy bench`` over gRPC at each fixed rate (10 s warm-up, then
``--duration``). The server's threads are read from ``/proc/<pid>/task/*/stat`` before and after: slot
threads (``squishy-slot-N``), the event loop (the main thread), gRPC's own threads; the generator reports
its own CPU. Printed per request, beside the twin's calibration (``results/twin/calibration.json``, measured
on a ``null-zero`` server whose slots do no work) when present: what the twin charges is measured with idle
slots, and the same work costs more CPU when the slots keep both cores busy.

``--twin``: from the last run's file, the twin's goodput search for the model alone with its calibration as
measured, and with the frontend's and the generator's costs replaced by those measured here at the first
rate (the event loop and every other non-slot thread, split evenly between request and reply).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLES = Path("examples/repository")
CALIBRATION = Path("results/twin/calibration.json")


def grouped(threads: dict[str, float]) -> dict[str, float]:
    """Thread CPU seconds summed into the groups the twin charges: slots, the event loop, the rest by name."""
    out: dict[str, float] = {}
    for name, seconds in threads.items():
        group = "slots" if name.startswith("squishy-slot") else "event loop" if name == "main" else name
        out[group] = out.get(group, 0.0) + seconds
    return out


def one_rate(model: str, repository: Path, rate: float, duration: float, shape: str) -> dict:
    from squishy.bench.launch import start_squishy

    with start_squishy(repository, ["--log-level", "warning"]) as server:
        before = grouped(server.thread_cpu_s())
        report = Path(tempfile.mkdtemp()) / "bench.json"
        command = [
            sys.executable, "-m", "squishy.cli", "bench", "--protocol", "grpc", "--grpc-url",
            f"127.0.0.1:{server.grpc_port}", "--model", model, "--rate", str(rate), "--slo-ms", "200",
            "--duration", str(duration), "--warmup", "10", "--no-progress", "--input", shape, "--json", str(report),
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, text=True)
        after = grouped(server.thread_cpu_s())
    run = json.loads(report.read_text())["run"]
    sent = run["overall"]["sent"] * (duration + 10.0) / duration  # warm-up requests cost CPU too
    spent = {group: after.get(group, 0.0) - before.get(group, 0.0) for group in after}
    generator_s = run["generator"]["cpu_s"]
    return {
        "rate": rate,
        "within_slo": run["overall"]["met_fraction"],
        "throughput_per_s": run["overall"]["throughput_per_s"],
        "cpu_s": {**spent, "generator": generator_s},
        "ms_per_request": {group: 1000.0 * s / sent for group, s in {**spent, "generator": generator_s}.items()},
    }


def twin_goodput(model: str, repository: Path) -> None:
    from squishy.bench.calibrate import Calibration
    from squishy.sim.twin import Twin, physical_limit

    measured = sorted(Path("results/twin").glob("host-cpu-*.json"))
    if not measured or not CALIBRATION.exists():
        raise SystemExit("needs results/twin/calibration.json and a host-cpu run of this benchmark first")
    row = json.loads(measured[-1].read_text())["rows"][0]["ms_per_request"]
    server_ms = sum(ms for group, ms in row.items() if group not in ("slots", "generator"))
    idle = Calibration.load(CALIBRATION)
    data = idle.to_dict()
    costs = data["models"][model]
    count = len(costs["rates_per_s"])
    costs["frontend_ms"] = costs["reply_ms"] = [server_ms / 2] * count
    costs["generator_ms"] = [row["generator"]] * count
    for name, calibration in (("idle slots", idle), ("busy slots", Calibration.from_dict(data))):
        twin = Twin(repository, calibration, {model: 1.0}, warmup_s=10.0, duration_s=20.0)
        limit = physical_limit(twin)
        found = twin.search(start_per_s=limit * 0.7, seed=0)
        print(f"twin, host costs measured beside {name}: goodput {found.rate:.1f} req/s (slots' limit {limit:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18-half")
    parser.add_argument("--rates", default="100,157")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--shape", default="image=1,3,224,224:FP32", help="the model's input, for the generator")
    parser.add_argument("--twin", action="store_true", help="predict goodput from the last run's costs")
    args = parser.parse_args()
    repository = Path(tempfile.mkdtemp(prefix="squishy-host-cpu-"))
    shutil.copytree(EXAMPLES / args.model, repository / args.model, copy_function=shutil.copy2)
    if args.twin:
        twin_goodput(args.model, repository)
        return
    calibrated = {}
    if CALIBRATION.exists():
        costs = json.loads(CALIBRATION.read_text())["models"].get(args.model, {})
        if costs:
            calibrated = {
                "event loop (frontend + reply)": costs["frontend_ms"][0] + costs["reply_ms"][0],
                "generator": costs["generator_ms"][0],
            }
            print(f"twin calibration at {costs['rates_per_s'][0]:g} req/s, idle slots: {calibrated}")
    rows = []
    for rate in (float(r) for r in args.rates.split(",")):
        row = one_rate(args.model, repository, rate, args.duration, args.shape)
        rows.append(row)
        per = ", ".join(f"{group} {ms:.2f}" for group, ms in sorted(row["ms_per_request"].items()))
        print(
            f"{rate:g} req/s: {row['within_slo']:.1%} within SLO, {row['throughput_per_s']:.1f} req/s answered; "
            f"CPU ms per request: {per}",
            flush=True,
        )
    out = Path("results/twin") / f"host-cpu-{time.strftime('%Y-%m-%d')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "calibrated": calibrated}
    document["rows"] = rows
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
