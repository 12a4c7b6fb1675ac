"""``squishy plan WORKLOAD``: print the plan for a workload file (a table, or the plan JSON)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from squishy.errors import WorkloadError
from squishy.profiles import read_structured
from squishy.scheduler import POLICIES, Plan, make_plan
from squishy.scheduler.replan import replan
from squishy.workload_file import load_workload


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("plan", help="pack a workload's sessions onto backends and print the plan")
    parser.add_argument("workload", help="workload file (YAML or JSON)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--policy", choices=POLICIES, default="squishy", help="packing policy (default: squishy)")
    parser.add_argument(
        "--from",
        dest="previous",
        metavar="PLAN_JSON",
        help="re-plan incrementally from this plan (as printed by --json), moving as few sessions as possible",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_workload(args.workload)
    moved: list[str] | None = None
    try:
        if args.previous:
            previous = Plan.from_dict(read_structured(Path(args.previous)))
            result = replan(previous, loaded.workload, loaded.profiles)
            plan = result.plan
            moved = [str(k) for k in result.moved]
        else:
            plan = make_plan(loaded.workload, loaded.profiles, policy=args.policy)
    except WorkloadError as exc:
        raise WorkloadError(f"{loaded.path}: {exc}") from None
    if args.json:
        data = plan.to_dict()
        if moved is not None:
            data["moved_sessions"] = moved
        print(json.dumps(data, indent=2))
    else:
        print(render(plan))
        if moved is not None:
            print(f"sessions moved: {len(moved)}" + (f" ({', '.join(moved)})" if moved else ""))
    return 0


def render(plan: Plan) -> str:
    rows = [("backend", "duty cycle", "occupancy", "model", "SLO ms", "rate r/s", "batch", "ℓ(b) ms")]
    for backend in plan.backends:
        cycle = "-" if backend.duty_cycle_ms is None else f"{backend.duty_cycle_ms:.1f} ms"
        for i, a in enumerate(backend.allocations):
            name = a.model if not a.members else f"{a.model} [{', '.join(m.model for m in a.members)}]"
            rows.append(
                (
                    str(backend.backend_id) if i == 0 else "",
                    cycle if i == 0 else "",
                    f"{backend.occupancy:.2f}" if i == 0 and backend.duty_cycle_ms else "",
                    name,
                    f"{a.slo_ms:g}",
                    f"{a.rate:.1f}",
                    str(a.batch),
                    f"{a.latency_ms:.1f}",
                )
            )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"{plan.num_backends} backends ({plan.policy}); {_bounds(plan)}")
    for query, split in plan.query_slo_split.items():
        parts = ", ".join(f"{stage} {ms:g} ms" for stage, ms in split.items())
        lines.append(f"query {query}: {parts}")
    if plan.idle_sessions:
        lines.append("idle (rate 0): " + ", ".join(str(k) for k in plan.idle_sessions))
    return "\n".join(lines)


def _bounds(plan: Plan) -> str:
    """The lower bounds, and how far the plan is from them. Below one backend's worth of work a ratio to
    the fractional bound means nothing (a cheap model's 0.001 backends): compare with whole backends."""
    bound = max(plan.lower_bound, plan.residual_bound)
    text = f"lower bound {plan.lower_bound:.2f}, residual-aware bound {plan.residual_bound:.2f}"
    if plan.num_backends == 0:
        return text
    if bound >= 1.0:
        return f"{text} (ratio {plan.num_backends / bound:.2f})"
    return f"{text}: the load is under one backend's worth of work, so any plan needs 1"
