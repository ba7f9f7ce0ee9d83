"""``microfaas replay``: replay a trace under several keep-alive policies, tabulate and plot.

Policy specs: ``fixed:TTL`` (seconds), ``hybrid`` (``HistogramKeepAlive``),
``greedydual``, ``adaptive`` or ``adaptive:VALUE_S`` (``AdaptiveKeepAlive``),
``never`` (``NeverUnload``). The sweep ``LO..HI`` replays fixed TTLs spaced
evenly on a log scale; the plot draws the sweep as a curve of p75 per-app
cold-start ratio (and overall ratio) against idle memory, each policy as a point.
The table's "vs" columns divide by the baseline policy's report (``fixed:600``
unless ``--baseline`` says otherwise), which is replayed too.
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

__all__ = ["parse_policy", "parse_sweep", "plot", "policy_label", "run", "table"]


PLOT_EXTRA = "--plot needs matplotlib: pip install 'microfaas[plot]'"


def parse_policy(spec: str) -> KeepAlivePolicy:
    """The keep-alive policy a spec names (``fixed:600``, ``hybrid``, ``adaptive``, ...).

    :raises ValueError: the spec names no policy, or its argument is bad.
    """
    return _policy(spec)[1]


def policy_label(spec: str) -> str:
    """A spec's one spelling, as the table and the JSON name it: ``fixed:600`` for ``fixed:600.0``, ``hybrid`` for ``histogram``.

    :raises ValueError: as ``parse_policy``.
    """
    return _policy(spec)[0]


def _policy(spec: str) -> tuple[str, KeepAlivePolicy]:
    kind, _, arg = spec.strip().partition(":")
    kind = kind.lower()
    try:
        if kind == "fixed":
            ttl = float(arg) if arg else 600.0
            return f"fixed:{ttl:g}", FixedKeepAlive(ttl)
        if kind in ("hybrid", "histogram"):
            return "hybrid", HistogramKeepAlive()
        if kind in ("greedydual", "faascache"):
            return "greedydual", GreedyDualKeepAlive()
        if kind == "adaptive":
            return (f"adaptive:{float(arg):g}", AdaptiveKeepAlive(value_s=float(arg))) if arg else ("adaptive", AdaptiveKeepAlive())
        if kind in ("never", "neverunload"):
            return "never", NeverUnload()
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


def _gb_h(mb_s: float) -> float:
    return mb_s / 1024 / 3600


def table(reports: list[ReplayReport], base: ReplayReport | None = None) -> str:
    """The reports as a text table; with ``base``, p75 and idle memory as multiples of its."""
    vs_p75, vs_idle = (f"p75 vs {base.policy}", f"idle vs {base.policy}") if base is not None else ("", "")
    head = f"{'policy':<20} {'cold':>7} {'ratio':>7} {'p75 app':>8} {'idle GB·h':>11} {'node·h':>8} {'wait s':>9} {'evicted':>7}"
    if base is not None:
        head += f" {vs_p75:>{max(8, len(vs_p75))}} {vs_idle:>{max(8, len(vs_idle))}}"
    lines = [head, "-" * len(head)]
    for r in reports:
        line = (
            f"{r.policy:<20} {r.cold_starts:>7} {r.cold_start_ratio:>7.4f} {r.p75_app_cold_start_ratio:>8.3f} "
            f"{_gb_h(r.idle_memory_mb_s):>11.1f} {r.node_seconds / 3600:>8.1f} {r.wait_s:>9.0f} "
            f"{r.containers_stopped.get('evicted', 0):>7}"
        )
        if base is not None:
            p75 = r.p75_app_cold_start_ratio / base.p75_app_cold_start_ratio if base.p75_app_cold_start_ratio else math.nan
            idle = r.idle_memory_mb_s / base.idle_memory_mb_s if base.idle_memory_mb_s else math.nan
            line += f" {p75:>{max(8, len(vs_p75)) - 1}.2f}x {idle:>{max(8, len(vs_idle)) - 1}.2f}x"
        lines.append(line)
    return "\n".join(lines)


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend.

    :raises ValueError: matplotlib is not installed (the message gives the pip command).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError(PLOT_EXTRA) from None
    return plt


POINT_MARKERS = ("*", "D", "s", "^", "v", "P", "X", "o")
# Where a sweep point's label may go, in points from the point: above right first, then
# below right, above left, below left; the first that covers no policy's marker and no
# label already placed wins.
LABEL_OFFSETS = ((4.0, 5.0), (4.0, -12.0), (-4.0, 5.0), (-4.0, -12.0))

Box = tuple[float, float, float, float]  # left, bottom, right, top, in display pixels


def _label_box(at: Any, text: str, px_per_pt: float) -> list[tuple[tuple[float, float], Box]]:
    """For each of ``LABEL_OFFSETS``: the offset to pass matplotlib, and the box the label would cover."""
    width, height = 4.2 * len(text), 7.0  # 7-point text
    choices = []
    for dx, dy in LABEL_OFFSETS:
        left = dx if dx > 0 else dx - width
        box = (at[0] + left * px_per_pt, at[1] + dy * px_per_pt, at[0] + (left + width) * px_per_pt, at[1] + (dy + height) * px_per_pt)
        choices.append(((left, dy), box))
    return choices


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place_label(at: Any, text: str, taken: list[Box], px_per_pt: float) -> tuple[float, float]:
    """The offset for a label at display point ``at`` that overlaps nothing in ``taken`` (which it joins)."""
    choices = _label_box(at, text, px_per_pt)
    offset, box = next(((o, b) for o, b in choices if not any(_overlaps(b, t) for t in taken)), choices[0])
    taken.append(box)
    return offset


def _compact(value: float, _position: object) -> str:
    return f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"


def plot(path: str, points: list[ReplayReport], sweep: list[ReplayReport], title: str) -> None:
    """Draw both cold-start ratios against idle memory: the sweep as a curve, each policy as a point.

    :raises ValueError: matplotlib is not installed.
    """
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, metric, label in (
        (axes[0], "p75_app_cold_start_ratio", "p75 per-app cold-start ratio"),
        (axes[1], "cold_start_ratio", "cold-start ratio, all invocations"),
    ):
        xs = [_gb_h(r.idle_memory_mb_s) for r in sweep]
        ys = [getattr(r, metric) for r in sweep]
        if sweep:
            ax.plot(xs, ys, "o-", color="grey", markersize=4, label="fixed TTL sweep (labels: TTL)")
        for r, marker in zip(points, POINT_MARKERS * (len(points) // len(POINT_MARKERS) + 1), strict=False):
            x, y = _gb_h(r.idle_memory_mb_s), getattr(r, metric)
            ax.plot([x], [y], marker, markersize=10, linestyle="none", label=r.policy, zorder=3)
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.autoscale_view()
        half = 7.0 * fig.dpi / 72  # a policy's marker, and a margin around it
        taken: list[Box] = []
        for r in points:
            cx, cy = ax.transData.transform((_gb_h(r.idle_memory_mb_s), getattr(r, metric)))
            taken.append((cx - half, cy - half, cx + half, cy + half))
        for r, x, y in zip(sweep, xs, ys, strict=True):
            text = f"{r.policy.removeprefix('fixed:')} s"
            offset = _place_label(ax.transData.transform((x, y)), text, taken, fig.dpi / 72)
            ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", fontsize=7, color="dimgrey")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(_compact))
        ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("idle memory kept warm, GB·h (lower is better)")
        ax.set_ylabel(f"{label} (lower is better)")
        ax.grid(True, which="major", alpha=0.4)
        ax.grid(True, which="minor", alpha=0.12)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """``microfaas replay``: replay, print the table, then write the plot and the JSON asked for.

    :raises ValueError: a bad policy, sweep or trace, or ``--plot`` without matplotlib; all
        are found before the replay starts, except a trace's bad rows.
    """
    policies: dict[str, KeepAlivePolicy] = {}
    for spec in [args.policy, *args.compare]:
        label, policy = _policy(spec)
        policies.setdefault(label, policy)
    baseline = policy_label(args.baseline)
    sweep_ttls = parse_sweep(args.sweep, args.sweep_points) if args.sweep else []
    if args.plot:
        _pyplot()  # now, not after a replay of minutes
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

    def one(label: str, policy: KeepAlivePolicy) -> ReplayReport:
        report = replay(trace, keep_alive=policy, nodes=nodes, progress=progress_for(label), name=label)
        if progress_for(label) is not None:
            print(f"\r  {label}: {report.wall_s:.1f} s, {report.decisions / report.wall_s:,.0f} decisions/s", file=sys.stderr)
        return report

    reports = [one(label, policy) for label, policy in policies.items()]
    sweep = [one(f"fixed:{ttl:g}", FixedKeepAlive(ttl)) for ttl in sweep_ttls]
    base = next((r for r in reports + sweep if r.policy == baseline), None)
    if base is None:
        base = one(baseline, parse_policy(args.baseline))
        reports.append(base)
    print(table(reports + sweep, base))
    if args.plot:
        plot(args.plot, reports, sweep, f"{Path(args.path).name}: {len(trace)} invocations, {len(trace.functions)} functions")
        print(f"plot: {args.plot}")
    if args.json_out:
        payload = {
            "trace": args.path,
            "seed": args.seed,
            "baseline": base.policy,
            "policies": [r.summary() | {"wall_s": r.wall_s, "decisions": r.decisions} for r in reports],
            "sweep": [r.summary() | {"wall_s": r.wall_s, "decisions": r.decisions} for r in sweep],
        }
        Path(args.json_out).write_text(json.dumps(payload, indent=2))
    return 0
