"""Readable tables and JSON documents for runs and searches, with the machine they ran on.

The generator's CPU use is printed beside the figures on purpose: on a shared machine it competes with
the server for the same cores, and a generator near a full core is measuring itself.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

from squishy import __version__
from squishy.bench.records import status_name
from squishy.bench.run import GeneratorUsage, RunResult
from squishy.bench.search import SearchResult, SearchStep
from squishy.bench.stats import Stats

# Beyond these the figures may say more about the generator than about the server.
SEND_LAG_WARNING_MS = 5.0
CPU_SHARE_WARNING = 0.8


def environment() -> dict[str, Any]:
    """Date, machine and versions: what docs/benchmarks.md asks to go with every figure."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "squishy": __version__,
        "argv": sys.argv,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.2f}%"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _stats_row(name: str, stats: Stats) -> list[str]:
    return [
        name,
        "-" if stats.slo_ms is None else f"{stats.slo_ms:g}",
        f"{stats.offered_rate_per_s:.1f}",
        str(stats.sent),
        _ms(stats.p50_ms),
        _ms(stats.p90_ms),
        _ms(stats.p99_ms),
        f"{stats.throughput_per_s:.1f}",
        f"{stats.goodput_per_s:.1f}",
        _pct(stats.met_fraction),
        str(stats.late),
        str(stats.dropped),
        str(stats.errors),
        _pct(stats.bad_rate),
    ]


def generator_line(usage: GeneratorUsage, result: RunResult | None = None) -> str:
    line = (
        f"generator: {usage.cpu_s:.2f} s CPU over {usage.wall_s:.2f} s = {100 * usage.cpu_share:.0f}% of one core"
        f" ({100 * usage.machine_share:.0f}% of the machine's {usage.cores} cores)"
    )
    if result is not None:
        overall = result.overall
        line += f"; send lag p50 {_ms(overall.send_lag_p50_ms)} ms, p99 {_ms(overall.send_lag_p99_ms)} ms"
        if result.config.protocol == "http":
            line += f"; {result.peak_connections} connections"
    return line


def render_run(result: RunResult) -> str:
    config = result.config
    header = ["model", "SLO ms", "offered r/s", "sent", "p50 ms", "p90 ms", "p99 ms"]
    header += ["thru r/s", "goodput r/s", "met", "late", "dropped", "errors", "bad rate"]
    rows = [header] + [_stats_row(name, stats) for name, stats in result.per_model.items()]
    if len(result.per_model) > 1:
        rows.append(_stats_row("overall", result.overall))
    lines = _table(rows)
    endpoint = config.url if config.protocol == "http" else config.grpc_url
    lines.append("")
    lines.append(
        f"{config.protocol} {endpoint}; {config.arrivals.describe()} arrivals, seed {config.seed};"
        f" {config.duration_s:g} s measured after {config.warmup_s:g} s warm-up; latency from scheduled send time"
    )
    lines.append(generator_line(result.generator, result))
    lines.extend(warnings(result))
    if result.cut_short:
        lines.append("stopped early: the SLO target could no longer be met")
    breakdown = {k: v for k, v in result.overall.status_counts.items() if k != 200}
    for status, count in sorted(breakdown.items()):
        message = result.error_messages.get(status, "")
        lines.append(f"status {status_name(status)}: {count}" + (f" ({message})" if message else ""))
    return "\n".join(lines)


def warnings(result: RunResult) -> list[str]:
    """Signs that the figures measure the generator (or its connection limit) rather than the server."""
    found = []
    lag_p99_ms = result.overall.send_lag_p99_ms
    if lag_p99_ms > SEND_LAG_WARNING_MS:
        cause = "the generator fell behind its schedule"
        if result.config.protocol == "http" and result.peak_connections >= result.config.max_connections:
            cause += f" or all {result.config.max_connections} connections were busy"
        found.append(
            f"warning: requests went out late (send lag p99 {lag_p99_ms:.1f} ms): {cause}; latency includes it"
        )
    if result.generator.cpu_share > CPU_SHARE_WARNING:
        found.append(
            f"warning: the generator used {100 * result.generator.cpu_share:.0f}% of a core: it may be the bottleneck"
        )
    return found


def render_step(step: SearchStep) -> str:
    overall = step.result.overall
    verdict = "pass" if step.passed else "FAIL"
    cut = " (stopped early)" if step.result.cut_short else ""
    return (
        f"{step.phase:8s} {step.rate_per_s:10.1f} req/s  met {_pct(overall.met_fraction):>8s}  "
        f"p99 {_ms(overall.p99_ms):>7s} ms  goodput {overall.goodput_per_s:8.1f} r/s  "
        f"generator {100 * step.result.generator.cpu_share:3.0f}% of a core  {verdict}{cut}"
    )


def render_search(found: SearchResult) -> str:
    lines = [render_step(step) for step in found.steps]
    lines.append("")
    lines.extend(render_curve(found))
    lines.append("")
    target = f"{100 * found.met_fraction:g}%"
    if found.rate_per_s == 0:
        lines.append(f"no rate tried met the SLO for {target} of requests")
    else:
        note = "" if found.confirmed else " (NOT confirmed: the confirming runs failed)"
        lines.append(f"goodput at the SLO ({target} within SLO): {found.rate_per_s:.1f} req/s offered{note}")
    best = found.best
    if best is not None:
        lines.append("")
        lines.append(render_run(best))
    return "\n".join(lines)


def render_curve(found: SearchResult) -> list[str]:
    """Every step by rate: where the search saw passes and failures (they need not be one edge)."""
    rows = [["rate r/s", "seed", "met (worst model)", "verdict", "phase"]]
    for step in found.curve:
        verdict = "pass" if step.passed else "FAIL" + (" (stopped early)" if step.result.cut_short else "")
        rows.append([f"{step.rate_per_s:.1f}", str(step.seed), _pct(step.worst_met_fraction), verdict, step.phase])
    return ["pass/fail curve:", *_table(rows)]
