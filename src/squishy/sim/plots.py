"""PNG plots of each study's results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DPI = 110


def plot_study(results: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    kind = results.get("study")
    plotter = {
        "drop-policy": _drop_policy,
        "throughput": _throughput,
        "optimality": _optimality,
        "large": _large,
        "bursty": _bursty,
    }.get(str(kind))
    if plotter is None:
        return []
    return plotter(results, out_dir, name)


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(figure)
    return path


def _drop_policy(results: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, style in (("poisson", "-"), ("uniform", "--")):
        for drop, color in (("early", "tab:blue"), ("lazy", "tab:red")):
            rows = [r for r in results["runs"] if r["arrivals"] == kind and r["drop"] == drop]
            left.plot(
                [r["alpha_ms"] for r in rows],
                [100 * r["bad_rate"] for r in rows],
                style,
                marker="o",
                color=color,
                label=f"{drop} drop, {kind}",
            )
    left.set_xlabel("α (ms per input)")
    left.set_ylabel("bad rate (%)")
    left.set_title(f"{results['load']:.0%} load, SLO {results['slo_ms']:g} ms")
    left.legend()
    for drop, color in (("early", "tab:blue"), ("lazy", "tab:red")):
        rows = [r for r in results["throughput_at_99"] if r["drop"] == drop]
        right.plot([r["alpha_ms"] for r in rows], [r["throughput"] for r in rows], marker="o", color=color, label=drop)
    right.axhline(results["optimum_rate"], color="gray", linestyle=":", label="optimum")
    right.set_xlabel("α (ms per input)")
    right.set_ylabel("throughput at 99% good (req/s)")
    right.set_title("Poisson arrivals")
    right.legend()
    return [_save(figure, out_dir / f"{name}.png")]


def _throughput(results: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    summary = results["summary"]
    systems = list(summary)
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    values = [summary[s]["throughput"] for s in systems]
    colors = [
        "tab:blue" if s == "squishy" else "tab:red" if s in ("clipper", "tf-serving") else "tab:gray" for s in systems
    ]
    left.barh(systems[::-1], values[::-1], color=colors[::-1])
    for index, value in enumerate(values[::-1]):
        left.text(value, index, f" {value:,.0f}", va="center")
    left.set_xlabel("throughput at 99% good (req/s)")
    left.set_title(f"{results['scenario']}: {results['cluster_backends']} backends")
    left.set_xlim(0, max(values) * 1.25 if values and max(values) else 1)
    for system in systems:
        probes = [p for p in results["searches"][system]["probes"] if p.get("fits") and p.get("offered_rate")]
        probes = sorted({p["scale"]: p for p in probes}.values(), key=lambda p: p["scale"])
        right.plot(
            [p["offered_rate"] for p in probes],
            [100 * p["good_rate"] for p in probes],
            marker=".",
            label=system,
        )
    right.axhline(99, color="gray", linestyle=":")
    right.set_xscale("log")
    right.set_ylim(0, 101)
    right.set_xlabel("offered load (req/s)")
    right.set_ylabel("good (%)")
    right.set_title("search probes")
    right.legend(fontsize=7)
    return [_save(figure, out_dir / f"{name}.png")]


def _optimality(results: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    apps = results["apps"]
    figure, axes = plt.subplots(1, len(apps), figsize=(5 * len(apps), 4), squeeze=False)
    for axis, (app, data) in zip(axes[0], apps.items(), strict=True):
        sweep = data["sweep"]
        axis.plot([p["rate"] for p in sweep], [p["backends"] for p in sweep], marker="o", label="squishy backends")
        axis.plot(
            [p["rate"] for p in sweep], [p["lower_bound"] for p in sweep], marker=".", label="lower bound ΣR/T(B)"
        )
        axis.set_xlabel("load (req/s)")
        axis.set_ylabel("backends")
        ratio = data["ratio"]
        axis.set_title(f"{app}: {data['backends']} vs {data['lower_bound']:.2f} ({ratio:.2f}x) at 99% load")
        axis.legend()
    return [_save(figure, out_dir / f"{name}.png")]


def _large(results: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    series = results["series"]
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    seconds = list(range(len(series["sent"])))
    top.plot(seconds, series["sent"], linewidth=0.6)
    top.set_ylabel("requests sent per s")
    bad10 = [100 * (v or 0.0) for v in series["bad_rate_10s"]]
    bad1 = [100 * (v or 0.0) for v in series["bad_rate_1s"]]
    apps = {app: data["bad_rate_10s"] for app, data in results.get("apps", {}).items() if "bad_rate_10s" in data}
    if apps:  # each app's 10 s bad rate: one failing app must not hide how the others fare
        middle.plot(seconds, bad10, linewidth=1.2, color="black", label="all, 10 s window")
        for app, values in apps.items():
            middle.plot(seconds[: len(values)], [100 * (v or 0.0) for v in values], linewidth=0.8, label=app)
    else:
        middle.plot(seconds, bad1, linewidth=0.4, color="tab:orange", alpha=0.6, label="1 s")
        middle.plot(seconds, bad10, linewidth=0.9, color="tab:red", label="10 s window")
    middle.axhline(1.0, color="gray", linestyle=":")
    middle.set_ylabel("bad rate (%)")
    middle.set_yscale("symlog", linthresh=0.1)
    middle.set_ylim(bottom=0)
    middle.legend(loc="lower right", fontsize="small", ncol=3)
    ticks = list(range(1, len(series["backends"]) + 1))
    bottom.plot(ticks, series["backends"], color="tab:green", label="in use")
    replan_times = [r["time_s"] for r in results["replans"]]
    planned = [r["backends"] for r in results["replans"]]
    bottom.step(replan_times, planned, where="post", color="tab:blue", linewidth=0.8, label="planned")
    bottom.axhline(results["cluster_backends"], color="black", linestyle=":", label="cluster")
    bottom.set_ylabel("backends")
    bottom.set_xlabel("time (s)")
    bottom.legend(loc="lower right", fontsize="small")
    for axis in (top, middle, bottom):
        for start in results["rate_schedule"]["starts_s"][1:]:
            axis.axvline(start, color="gray", linewidth=0.5, linestyle="--")
        for segment in results.get("segments", []):
            if segment["over_capacity"]:  # demand above what the cluster holds
                axis.axvspan(segment["start_s"], segment["end_s"], color="tab:red", alpha=0.08)
    overall = results["overall"]
    under = results.get("by_capacity", {}).get("under_capacity", {}).get("bad_rate")
    title = f"{results['scenario']}: bad rate {100 * overall['bad_rate']:.3f}% over {overall['sent']:,} requests"
    if under is not None:
        title += f" ({100 * under:.3f}% while under capacity; shaded: over capacity)"
    top.set_title(title, fontsize="medium")
    return [_save(figure, out_dir / f"{name}.png")]


def _bursty(results: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    apps = results["apps"]
    figure, axes = plt.subplots(1, len(apps), figsize=(5.5 * len(apps), 4), squeeze=False)
    for axis, (app, data) in zip(axes[0], apps.items(), strict=True):
        rows = data["rows"]
        cvs = [r["cv"] for r in rows]
        for key in [k for k in rows[0] if k.endswith("_throughput")]:
            axis.plot(cvs, [r[key] for r in rows], marker="o", label=key.replace("_throughput", ""))
        axis.set_xlabel("arrival CV (1 = Poisson)")
        axis.set_ylabel("throughput at 99% good (req/s)")
        axis.set_yscale("log")
        axis.set_title(app)
        axis.legend()
    paths = [_save(figure, out_dir / f"{name}.png")]
    if all("curves" in data for data in apps.values()):
        paths.append(_bursty_curves(apps, out_dir / f"{name}-curves.png"))
    return paths


def _bursty_curves(apps: dict[str, Any], path: Path) -> Path:
    """squishy's pass/fail curves: good rate against offered rate, plans for the mean and with headroom,
    one line per arrival process (scan and bisection probes, on the search's first seed)."""
    figure, axes = plt.subplots(1, len(apps), figsize=(5.5 * len(apps), 4), squeeze=False)
    for axis, (app, data) in zip(axes[0], apps.items(), strict=True):
        for process, curves in data["curves"].items():
            for plan, style in (("plan_for_mean", "-"), ("plan_with_headroom", "--")):
                points = [p for p in curves.get(plan, []) if p["phase"] != "confirm"]
                if not points:
                    continue
                label = f"{process}, {plan.replace('_', ' ')}"
                axis.plot(
                    [p["rate"] for p in points], [100 * p["good_rate"] for p in points], style, marker=".", label=label
                )
        axis.axhline(99.0, color="grey", linewidth=0.8)
        axis.set_xscale("log")
        axis.set_xlabel("offered rate (req/s)")
        axis.set_ylabel("good (%)")
        axis.set_ylim(0, 101)
        axis.set_title(f"{app}: squishy's pass/fail curves")
        axis.legend(fontsize="small")
    return _save(figure, path)
