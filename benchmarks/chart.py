"""Draw the run's figures as one PNG (matplotlib, Agg backend, imported only here)."""

from __future__ import annotations

from typing import Any

from .report import COLUMNS, SHORT


def draw(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    ray = results.get("ray_phase") or {}

    def series(figure: str, field: str) -> tuple[list[str], list[float]]:
        data = dict(results.get(figure) or {})
        if ray.get(figure, {}).get("ray"):
            data["ray"] = ray[figure]["ray"]
        names = [c for c in COLUMNS if field in data.get(c, {})]
        return [SHORT[c] for c in names], [data[c][field] for c in names]

    cold = results["cold_start"]
    panels = [
        ("warm no-op round trip p50 (µs, lower is better)", *series("warm_round_trip", "p50_us"), True),
        ("10k concurrent no-ops on 2 workers (calls/s, higher is better)", *series("throughput", "calls_per_s"), True),
        ("10 MiB echo p50 (ms, lower is better)", *series("payload_10mib", "p50_ms"), False),
        ("idle worker USS (MiB, lower is better)", *series("idle_memory", "uss_mb"), False),
        (
            "cold start to first result p50 (ms)",
            ["raw fork+pipe", "microfaas fork", "microfaas spawn"],
            [cold["raw_fork_pipe"]["p50_ms"], cold["microfaas_fork"]["p50_ms"], cold["microfaas_spawn"]["p50_ms"]],
            True,
        ),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, (title, names, values, log) in zip(axes.flat, panels, strict=False):
        colors = ["#d62728" if n.startswith("microfaas") else "#7f7f7f" if n in ("floor", "raw fork+pipe") else "#1f77b4" for n in names]
        bars = ax.bar(names, values, color=colors)
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        for bar, value in zip(bars, values, strict=True):
            ax.annotate(f"{value:,.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7)
    ax = axes.flat[-1]
    ax.axis("off")
    lines = ["ratios (target)"]
    for key, value in report["ratios"].items():
        st = report["targets"].get(key)
        mark = "" if st is None else f"  ({st['target']}: {'met' if st['met'] else 'NOT met'})"
        lines.append(f"{key} = {value:,.3g}{mark}")
    m = report["machine"]
    lines += ["", f"{m['cores']} cores, Python {m['python']}", m["cpu"][:60], f"{'quick' if report['config']['quick'] else 'full'} run"]
    ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8)
    fig.suptitle("microfaas vs peers (one run, contenders interleaved)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
