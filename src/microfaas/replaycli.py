"""``microfaas replay``: replay a trace under several keep-alive policies, tabulate and plot.

Policy specs: ``fixed:TTL`` (seconds), ``hybrid`` (``HistogramKeepAlive``),
``greedydual``, ``adaptive`` or ``adaptive:VALUE_S`` (``AdaptiveKeepAlive``),
``never`` (``NeverUnload``). The sweep ``LO..HI`` replays fixed TTLs spaced
evenly on a log scale; the plot draws the sweep as a curve of p75 per-app
cold-start ratio (and overall ratio) against idle memory, each policy as a point.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from .keepalive import AdaptiveKeepAlive, FixedKeepAlive, GreedyDualKeepAlive, HistogramKeepAlive, KeepAlivePolicy, NeverUnload
from .sim import REPLAY_NODES, ReplayReport, SimulatedNodes, Trace, load_azure, load_csv, replay

__all__ = ["parse_policy", "parse_sweep", "plot", "run", "table"]


def parse_policy(spec: str) -> KeepAlivePolicy:
    kind, _, arg = spec.strip().partition(":")
    kind = kind.lower()
    try:
        if kind == "fixed":
            return FixedKeepAlive(float(arg) if arg else 600.0)
        if kind in ("hybrid", "histogram"):
            return HistogramKeepAlive()
        if kind in ("greedydual", "faascache"):
            return GreedyDualKeepAlive()
        if kind == "adaptive":
            return AdaptiveKeepAlive(value_s=float(arg)) if arg else AdaptiveKeepAlive()
        if kind in ("never", "neverunload"):
            return NeverUnload()
    except ValueError as exc:
        raise ValueError(f"policy {spec!r}: {exc}") from None
    raise ValueError(f"unknown policy {spec!r}; use fixed:TTL, hybrid, greedydual, adaptive[:VALUE_S] or never")


def parse_sweep(spec: str, points: int) -> list[float]:
    low_text, sep, high_text = spec.partition("..")
    try:
        low, high = float(low_text), float(high_text)
    except ValueError:
        low = high = math.nan
    if not sep or not (0 < low < high) or points < 2:
        raise ValueError(f"--sweep: expected LO..HI with 0 < LO < HI seconds and --sweep-points >= 2, got {spec!r}")
    ratio = (high / low) ** (1 / (points - 1))
    return [round(low * ratio**i) for i in range(points)]


def load(path: str, args: argparse.Namespace) -> Trace:
    if Path(path).name.endswith("_inv.csv"):
        return load_azure(path, seed=args.seed, arrivals=args.arrivals, minutes=args.minutes)
    return load_csv(path)


def table(reports: list[ReplayReport], base: ReplayReport | None = None) -> str:
    head = f"{'policy':<20} {'cold':>7} {'ratio':>7} {'p75 app':>8} {'idle GB·h':>11} {'node·h':>8} {'wait s':>9} {'evicted':>7}"
    if base is not None:
        head += f" {'p75 vs':>7} {'idle vs':>7}"
    lines = [head, "-" * len(head)]
    for r in reports:
        line = (
            f"{r.policy:<20} {r.cold_starts:>7} {r.cold_start_ratio:>7.4f} {r.p75_app_cold_start_ratio:>8.3f} "
            f"{r.idle_memory_mb_s / 1024 / 3600:>11.1f} {r.node_seconds / 3600:>8.1f} {r.wait_s:>9.0f} "
            f"{r.containers_stopped.get('evicted', 0):>7}"
        )
        if base is not None:
            p75 = r.p75_app_cold_start_ratio / base.p75_app_cold_start_ratio if base.p75_app_cold_start_ratio else math.nan
            idle = r.idle_memory_mb_s / base.idle_memory_mb_s if base.idle_memory_mb_s else math.nan
            line += f" {p75:>6.2f}x {idle:>6.2f}x"
        lines.append(line)
    return "\n".join(lines)


def plot(path: str, points: list[ReplayReport], sweep: list[ReplayReport], title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'microfaas[plot]'") from None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, metric, label in (
        (axes[0], "p75_app_cold_start_ratio", "p75 per-app cold-start ratio"),
        (axes[1], "cold_start_ratio", "cold-start ratio (all invocations)"),
    ):
        if sweep:
            xs = [r.idle_memory_mb_s / 1024 / 3600 for r in sweep]
            ax.plot(xs, [getattr(r, metric) for r in sweep], "o-", color="grey", label="fixed TTL sweep")
            for r, x in zip(sweep, xs, strict=True):
                ax.annotate(r.policy.removeprefix("fixed:") + "s", (x, getattr(r, metric)), fontsize=7, color="grey")
        for r in points:
            ax.plot([r.idle_memory_mb_s / 1024 / 3600], [getattr(r, metric)], "*", markersize=12, label=r.policy)
        ax.set_xscale("log")
        ax.set_xlabel("idle memory kept warm (GB·h)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    specs = [args.policy, *args.compare]
    policies = [(spec, parse_policy(spec)) for spec in specs]
    sweep_ttls = parse_sweep(args.sweep, args.sweep_points) if args.sweep else []
    nodes = REPLAY_NODES
    if args.node_memory_mb is not None or args.max_nodes is not None:
        nodes = SimulatedNodes(
            max_nodes=args.max_nodes or REPLAY_NODES.max_nodes,
            node_memory_mb=args.node_memory_mb or REPLAY_NODES.node_memory_mb,
            release_after=REPLAY_NODES.release_after,
        )
    trace = load(args.path, args)
    print(f"{args.path}: {len(trace)} invocations of {len(trace.functions)} functions in {len(trace.apps())} apps", flush=True)

    def progress_for(label: str) -> Any:
        if args.quiet or len(trace) < 50_000:
            return None

        def show(done: int, total: int) -> None:
            print(f"\r  {label}: {100 * done // total:3d}%", end="", file=sys.stderr, flush=True)

        return show

    def one(spec: str, policy: KeepAlivePolicy) -> ReplayReport:
        report = replay(trace, keep_alive=policy, nodes=nodes, progress=progress_for(spec), name=spec)
        if progress_for(spec) is not None:
            print(f"\r  {spec}: {report.wall_s:.1f} s, {report.decisions / report.wall_s:,.0f} decisions/s", file=sys.stderr)
        return report

    reports = [one(spec, policy) for spec, policy in policies]
    sweep = [one(f"fixed:{ttl:g}", FixedKeepAlive(ttl)) for ttl in sweep_ttls]
    base = next((r for r in reports + sweep if r.policy in ("fixed:600", "fixed:600.0")), None)
    print(table(reports + sweep, base))
    if args.plot:
        plot(args.plot, reports, sweep, f"{Path(args.path).name}: {len(trace)} invocations, {len(trace.functions)} functions")
        print(f"plot: {args.plot}")
    if args.json_out:
        payload = {
            "trace": args.path,
            "seed": args.seed,
            "policies": [r.summary() | {"wall_s": r.wall_s, "decisions": r.decisions} for r in reports],
            "sweep": [r.summary() | {"wall_s": r.wall_s, "decisions": r.decisions} for r in sweep],
        }
        Path(args.json_out).write_text(json.dumps(payload, indent=2))
    return 0
