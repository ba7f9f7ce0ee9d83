"""Ratios, targets, and the table printed at the end of a run."""

from __future__ import annotations

from typing import Any

from benchmarks import brokers, cold_real, durable, redis_streams

from . import executor

# Column order of the table: microfaas first, then the floor, then each peer.
COLUMNS = ("microfaas", "socketpair_floor", "anyio_to_process", "process_pool_executor", "loky", "mp_pool", "pebble", "ray")
SHORT = {
    "microfaas": "microfaas",
    "socketpair_floor": "floor",
    "anyio_to_process": "anyio",
    "process_pool_executor": "PPE",
    "loky": "loky",
    "mp_pool": "mp.Pool",
    "pebble": "pebble",
    "ray": "ray",
}

# ratio key -> (comparison, target); the other two ratio keys are reported without a target.
TARGETS: dict[str, tuple[str, float]] = {
    "warm_p50_vs_anyio": ("<=", 0.8),
    "throughput_vs_mp_pool": (">=", 2.0),
    "cold_start_fork_ms": ("<=", 5.0),
    "cold_start_fork_vs_raw_fork": ("<=", 1.5),
    "cold_start_real_vs_noop": ("<=", 2.0),
    "payload_10mib_vs_ppe": ("<=", 0.7),
    "idle_container_uss_mb": ("<=", 5.0),
    "core_decisions_per_s": (">=", 200_000.0),
    "executor_p50_vs_ppe": (">=", 1.0),
    "executor_map_vs_ppe": (">=", 1.0),
    "durable_spawn_vs_memory": (">=", 0.5),
    "durable_spawn_vs_huey": (">=", 3.0),
    "durable_accept_p50_ms": ("<=", 1.0),
    "rabbitmq_vs_bare": (">=", 0.5),
    "mqtt_vs_bare": (">=", 0.5),
    "redis_stream_vs_bare": (">=", 0.5),
}


def ratios(results: dict[str, Any]) -> dict[str, float]:
    warm, thr, cold, pay, mem = (results[k] for k in ("warm_round_trip", "throughput", "cold_start", "payload_10mib", "idle_memory"))
    return {
        "warm_p50_vs_anyio": warm["microfaas"]["p50_us"] / warm["anyio_to_process"]["p50_us"],
        "warm_p50_vs_floor": warm["microfaas"]["p50_us"] / warm["socketpair_floor"]["p50_us"],
        "throughput_vs_mp_pool": thr["microfaas"]["calls_per_s"] / thr["mp_pool"]["calls_per_s"],
        "cold_start_fork_ms": cold["microfaas_fork"]["p50_ms"],
        "cold_start_fork_vs_raw_fork": cold["microfaas_fork"]["p50_ms"] / cold["raw_fork_pipe"]["p50_ms"],
        "payload_10mib_vs_ppe": pay["microfaas"]["p50_ms"] / pay["process_pool_executor"]["p50_ms"],
        "idle_container_uss_mb": mem["microfaas"]["uss_mb"],
        "core_decisions_per_s": results["core_decisions"]["decisions_per_s"],
        **executor.ratios(results),  # absent from runs made before the executor figures
        **(durable.ratios(results["durable"]) if results.get("durable") else {}),
        **(brokers.ratios(results["brokers"]) if results.get("brokers") else {}),
        **(redis_streams.ratios(results["redis_streams"]) if results.get("redis_streams") else {}),
        **(cold_real.ratios(results["cold_real"]) if results.get("cold_real") else {}),
    }


def target_status(ratios: dict[str, float]) -> dict[str, dict[str, Any]]:
    out = {}
    for key, (op, target) in TARGETS.items():
        if key not in ratios:  # a figure this run did not measure (no huey, or the durable phase left out)
            continue
        value = ratios[key]
        met = value <= target if op == "<=" else value >= target
        # How far off: the factor by which the figure must still improve (1.0 = met exactly).
        off_by = (value / target if op == "<=" else target / value) if value else float("inf")
        out[key] = {"value": value, "target": f"{op} {target:g}", "met": met, "off_by_factor": off_by}
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100_000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def rows(results: dict[str, Any], ratio: dict[str, float]) -> list[list[str]]:
    """The table as rows of cells: figure, one column per contender, ratio, target, met?"""
    status = target_status(ratio)
    ray = results.get("ray_phase") or {}

    def per(figure: str, field: str, extra: dict[str, Any] | None = None) -> list[float | None]:
        data = dict(results.get(figure) or {})
        if ray.get(figure, {}).get("ray"):
            data["ray"] = ray[figure]["ray"]
        data.update(extra or {})
        return [data.get(col, {}).get(field) for col in COLUMNS]

    def row(label: str, values: list[float | None], ratio_key: str | None = None, ratio_text: str | None = None) -> list[str]:
        if ratio_key is None:
            return [label, *(_fmt(v) for v in values), ratio_text or "", "", ""]
        st = status.get(ratio_key)
        value = ratio[ratio_key]
        text = f"{ratio_key} = {_fmt(value)}"
        if st is None:
            return [label, *(_fmt(v) for v in values), text, "", ""]
        return [label, *(_fmt(v) for v in values), text, st["target"], "yes" if st["met"] else "NO"]

    cold = results["cold_start"]
    core = results["core_decisions"]["decisions_per_s"]
    none = [None] * (len(COLUMNS) - 1)
    return [
        row("warm no-op p50 (us)", per("warm_round_trip", "p50_us"), "warm_p50_vs_anyio"),
        row("warm no-op p50 vs floor", per("warm_round_trip", "p50_us"), "warm_p50_vs_floor"),
        row("warm no-op p99 (us)", per("warm_round_trip", "p99_us")),
        row("10k no-ops on 2 workers (calls/s)", per("throughput", "calls_per_s"), "throughput_vs_mp_pool"),
        row(
            "cold start, fork, p50 (ms)",
            [cold["microfaas_fork"]["p50_ms"], cold["raw_fork_pipe"]["p50_ms"], *none[1:]],
            "cold_start_fork_ms",
        ),
        row("cold start fork vs raw fork+pipe", [None] * len(COLUMNS), "cold_start_fork_vs_raw_fork"),
        row("cold start, spawn, p50 (ms)", [cold["microfaas_spawn"]["p50_ms"], *none]),
        *cold_real.rows(results.get("cold_real"), row, len(COLUMNS)),
        row("10 MiB echo p50 (ms)", per("payload_10mib", "p50_ms"), "payload_10mib_vs_ppe"),
        row("idle worker USS (MiB)", per("idle_memory", "uss_mb"), "idle_container_uss_mb"),
        row("idle worker PSS (MiB)", per("idle_memory", "pss_mb")),
        row("scheduler core decisions/s", [core, *none], "core_decisions_per_s"),
        *executor_rows(results, row, per),
        *_durable_rows(results.get("durable"), ratio, row),
        *_broker_rows(results.get("brokers"), ratio, row),
        *_redis_rows(results.get("redis_streams"), ratio, row),
    ]


def executor_rows(results: dict[str, Any], row: Any, per: Any) -> list[list[str]]:
    """The rows of the executor figures (mf.Executor in the microfaas column), when the run has them."""
    if "executor_submit_result" not in results:
        return []
    return [
        row("executor submit->result p50 (us)", per("executor_submit_result", "p50_us"), "executor_p50_vs_ppe"),
        row("executor submit->result p99 (us)", per("executor_submit_result", "p99_us")),
        row("executor map, chunksize 1 (tasks/s)", per("executor_map_1", "tasks_per_s"), "executor_map1_vs_ppe"),
        row("executor map, chunksize 64 (tasks/s)", per("executor_map_64", "tasks_per_s"), "executor_map64_vs_ppe"),
        row("executor map vs PPE (the lower)", [None] * len(COLUMNS), "executor_map_vs_ppe"),
    ]


def _durable_rows(figures: dict[str, Any] | None, ratio: dict[str, float], row: Any) -> list[list[str]]:
    """The durable-spawn rows: the SQLite store in the microfaas column, the memory store and Huey named in the label."""
    if not figures:
        return []
    none = [None] * (len(COLUMNS) - 1)
    sqlite, memory, huey = figures["sqlite"], figures["memory"], figures.get("huey")
    throughput = [sqlite["calls_per_s"], *none]
    rows = [
        row(f"durable spawn->done, SQLite (calls/s; memory store {_fmt(memory['calls_per_s'])})", throughput, "durable_spawn_vs_memory"),
        row("durable spawn accept p50 (ms)", [sqlite["accept_p50_ms"], *none], "durable_accept_p50_ms"),
    ]
    if huey is not None and "durable_spawn_vs_huey" in ratio:
        rows.insert(1, row(f"  vs SqliteHuey ({_fmt(huey['calls_per_s'])} calls/s)", throughput, "durable_spawn_vs_huey"))
        invoke = figures.get("invoke")
        if invoke and "durable_invoke_vs_huey" in ratio:
            label = "  ceiling: the same calls invoked, nothing stored (calls/s)"
            rows.insert(2, row(label, [invoke["calls_per_s"], *none], "durable_invoke_vs_huey"))
    return rows


def _broker_rows(figures: dict[str, Any] | None, ratio: dict[str, float], row: Any) -> list[list[str]]:
    """Messages/s through the connectors (microfaas column), the bare consumer named in the label."""
    rows = []
    none = [None] * (len(COLUMNS) - 1)
    for name, client in (("rabbitmq", "aio-pika"), ("mqtt", "aiomqtt")):
        data = (figures or {}).get(name)
        if not data or f"{name}_vs_bare" not in ratio:
            continue
        bare = _fmt(data["bare"]["messages_per_s"])
        rows.append(row(f"{name} msgs/s, batch 1 (bare {client} {bare})", [data["microfaas"]["messages_per_s"], *none], f"{name}_vs_bare"))
        batched = [data["microfaas_batched"]["messages_per_s"], *none]
        rows.append(row(f"{name} msgs/s, batches of 50", batched, f"{name}_batched_vs_bare"))
    return rows


def _redis_rows(figures: dict[str, Any] | None, ratio: dict[str, float], row: Any) -> list[list[str]]:
    """The Redis Streams row: mf.RedisStream in the microfaas column, the bare consumer loop named in the label."""
    if not figures or "redis_stream_vs_bare" not in ratio:
        return []
    bare = figures["bare"]["entries_per_s"]
    label = f"Redis stream entries/s (bare redis-py loop {_fmt(bare)})"
    return [row(label, [figures["microfaas"]["entries_per_s"], *[None] * (len(COLUMNS) - 1)], "redis_stream_vs_bare")]


HEADER = ["figure", *(SHORT[c] for c in COLUMNS), "ratio", "target", "met?"]


def text_table(table: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *table]) for i in range(len(HEADER))]

    def line(r: list[str]) -> str:
        left = (0, len(HEADER) - 3, len(HEADER) - 2, len(HEADER) - 1)
        return "  ".join(cell.ljust(w) if i in left else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True)))

    lines = [line(r) for r in [HEADER, *table]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in table]
    return "\n".join(lines)


def cli() -> None:
    """``python -m benchmarks.report RESULTS.json``: print a run's table as Markdown (for docs/performance.md)."""
    import json
    import sys

    with open(sys.argv[1]) as f:
        result = json.load(f)
    print(markdown_table(rows(result["results"], result["ratios"])))


if __name__ == "__main__":
    cli()
