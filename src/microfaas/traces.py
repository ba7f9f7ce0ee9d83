"""Invocation traces for ``sim.replay``: the Azure Functions 2019 format and a plain CSV.

How this works. A ``Trace`` is a list of calls sorted by arrival time, held as
parallel lists (``times``, ``calls`` -- an index into ``functions`` --,
``durations``, ``memory``) so that a day of production traffic costs a few
megabytes and no object per call. Each function carries its app, the memory
its containers are sized at and its cold-start time.

* ``load_azure("50_inv.csv", seed=0)`` reads the Azure 2019 schema (Shahrad et
  al., "Serverless in the Wild", USENIX ATC 2020): per-minute invocation counts
  (``N_inv.csv``), per-function duration percentiles (``N_run.csv``) and per-app
  allocated-memory percentiles (``N_mem.csv``, found beside it). Arrivals are
  spread within each minute -- ``"uniform"``: sorted uniform draws;
  ``"poisson"``: exponential gaps rescaled to fill the minute (InVitro's way);
  the per-minute count is kept exactly either way. Each call's duration and
  memory are drawn from its function's (app's) percentiles by linear
  interpolation between the published points. Same file, same seed, same trace.
* ``load_csv("calls.csv")``: columns ``time_s, function, duration_s,
  memory_mb`` (any order, extra columns ignored; an ``app`` column groups
  functions into apps, else each function is its own app).

A function's containers are sized at the median memory of its calls (one
configured size per function, as on Lambda; for Azure, the app's median
allocated memory split evenly over the app's functions), times
``memory_scale``. Its cold start is ``cold_start_s(memory_mb)``, by default
``default_cold_start_s``: 0.5 s plus 0.5 s per GB.

Bad input raises ``TraceError`` naming the file, line and column
(``50_run.csv:7:11: ...``), both 1-based.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

from .keepalive import default_cold_start_s

__all__ = ["Trace", "TraceError", "TraceFunction", "load_azure", "load_csv"]

_RUN_POINTS = (0.0, 0.01, 0.25, 0.50, 0.75, 0.99, 1.0)
_RUN_COLUMNS = tuple(f"percentile_Average_{p}" for p in (0, 1, 25, 50, 75, 99, 100))
_MEM_POINTS = (0.01, 0.05, 0.25, 0.50, 0.75, 0.95, 0.99, 1.0)
_MEM_COLUMNS = tuple(f"AverageAllocatedMb_pct{p}" for p in (1, 5, 25, 50, 75, 95, 99, 100))
_CSV_COLUMNS = ("time_s", "function", "duration_s", "memory_mb")


class TraceError(ValueError):
    """A trace file that cannot be read; the message starts with ``file:line:column:``."""

    def __init__(self, path: str | Path, line: int, column: int, message: str) -> None:
        super().__init__(f"{path}:{line}:{column}: {message}")
        self.path, self.line, self.column = str(path), line, column


@attrs.frozen
class TraceFunction:
    name: str
    app: str
    memory_mb: int
    cold_start_s: float


@attrs.define(eq=False)
class Trace:
    """Calls sorted by arrival: call i is ``functions[calls[i]]`` at ``times[i]``."""

    source: str
    functions: list[TraceFunction]
    times: list[float]
    calls: list[int]
    durations: list[float]
    memory: list[float]

    def __len__(self) -> int:
        return len(self.times)

    def apps(self) -> dict[str, list[str]]:
        """App -> its functions."""
        grouped: dict[str, list[str]] = {}
        for fn in self.functions:
            grouped.setdefault(fn.app, []).append(fn.name)
        return grouped

    def invocations(self) -> Iterator[tuple[float, str, float]]:
        """``(time_s, function, duration_s)`` per call, in arrival order."""
        names = [fn.name for fn in self.functions]
        for t, f, d in zip(self.times, self.calls, self.durations, strict=True):
            yield t, names[f], d


def _interpolate(points: tuple[float, ...], values: list[float], u: float) -> float:
    if u <= points[0]:
        return values[0]
    for i in range(1, len(points)):
        if u <= points[i]:
            lo, hi = points[i - 1], points[i]
            return values[i - 1] + (values[i] - values[i - 1]) * (u - lo) / (hi - lo)
    return values[-1]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


class _Reader:
    """A csv reader that knows where it is, for errors that name file, line and column."""

    def __init__(self, path: Path, required: tuple[str, ...]) -> None:
        self.path = path
        try:
            self.handle = path.open(newline="", encoding="utf-8")
        except FileNotFoundError:
            raise TraceError(path, 0, 0, _no_such_file(path)) from None
        except OSError as exc:
            raise TraceError(path, 0, 0, f"cannot open: {exc.strerror or exc}") from None
        self.rows = csv.reader(self.handle)
        self.line = 0
        try:
            header = next(self.rows, None)
        except csv.Error as exc:
            self.close()
            raise TraceError(path, 1, 1, f"not CSV: {exc}") from None
        self.line = 1
        if not header:
            self.close()
            raise TraceError(path, 1, 1, f"empty file; expected a header with {', '.join(required)}")
        self.header = [h.strip() for h in header]
        missing = [c for c in required if c not in self.header]
        if missing:
            self.close()
            raise TraceError(path, 1, len(self.header) + 1, f"header lacks column {missing[0]!r}")
        self.col = {name: i for i, name in enumerate(self.header)}

    def __iter__(self) -> Iterator[list[str]]:
        try:
            for row in self.rows:
                self.line = self.rows.line_num
                if not row:
                    continue
                if len(row) < len(self.header):
                    self.fail(len(row) + 1, f"row ends after {len(row)} of {len(self.header)} columns (truncated?)")
                yield row
        except csv.Error as exc:
            self.fail(1, f"not CSV: {exc}")
        finally:
            self.close()

    def close(self) -> None:
        self.handle.close()

    def fail(self, column: int, message: str) -> None:
        raise TraceError(self.path, self.line, column, message)

    def number(self, row: list[str], name: str, *, integer: bool = False, low: float = 0.0) -> float:
        i = self.col[name]
        text = row[i].strip()
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            kind = "an integer" if integer else "a number"
            self.fail(i + 1, f"{name}: expected {kind}, got {text!r}")
        if not (value >= low and math.isfinite(value)):
            self.fail(i + 1, f"{name}: must be >= {low:g}, got {text!r}")
        return value


def _no_such_file(path: Path) -> str:
    return "no such file" if path.is_absolute() else f"no such file (a relative path is read from {Path.cwd()})"


def _sibling(inv: Path, kind: str) -> Path:
    if "_inv" not in inv.name:
        raise TraceError(inv, 0, 0, "expected a file named N_inv.csv, with N_run.csv and N_mem.csv beside it")
    return inv.with_name(inv.name.replace("_inv", f"_{kind}", 1))


def load_azure(
    path: str | Path,
    *,
    seed: int = 0,
    arrivals: str = "uniform",
    minutes: int | None = None,
    memory_scale: float = 1.0,
    duration_scale: float = 1.0,
    cold_start_s: Callable[[int], float] = default_cold_start_s,
) -> Trace:
    """Load an Azure Functions 2019 ``N_inv.csv`` with its ``N_run.csv`` and ``N_mem.csv``.

    :param arrivals: ``"uniform"`` or ``"poisson"`` spreading within each minute.
    :param minutes: replay only the first this many minutes (None: all).
    :param memory_scale: multiply memory (the samples' median is ~1.4 GB, the paper's ~170 MB).
    :param duration_scale: multiply durations.
    """
    if arrivals not in ("uniform", "poisson"):
        raise ValueError(f"arrivals must be 'uniform' or 'poisson', got {arrivals!r}")
    inv_path = Path(path)
    run_path, mem_path = _sibling(inv_path, "run"), _sibling(inv_path, "mem")
    # Errors name the file the caller gave: a missing N_inv.csv is not reported as its N_run.csv.
    if not inv_path.is_file():
        raise TraceError(inv_path, 0, 0, _no_such_file(inv_path))
    for sibling in (run_path, mem_path):
        if not sibling.is_file():
            raise TraceError(inv_path, 0, 0, f"{sibling} is missing: an Azure 2019 trace is N_inv.csv, N_run.csv and N_mem.csv together")

    run: dict[str, list[float]] = {}
    reader = _Reader(run_path, ("HashFunction", *_RUN_COLUMNS))
    for row in reader:
        run[row[reader.col["HashFunction"]]] = [reader.number(row, c) / 1000.0 * duration_scale for c in _RUN_COLUMNS]
    mem: dict[str, list[float]] = {}
    reader = _Reader(mem_path, ("HashApp", *_MEM_COLUMNS))
    for row in reader:
        mem[row[reader.col["HashApp"]]] = [reader.number(row, c, low=1.0) * memory_scale for c in _MEM_COLUMNS]

    reader = _Reader(inv_path, ("HashFunction", "HashApp"))
    first_minute = max(reader.col["HashFunction"], reader.col["HashApp"]) + 1
    minute_columns = [i for i in range(first_minute, len(reader.header)) if reader.header[i].startswith("minute")]
    if minutes is not None:
        minute_columns = minute_columns[:minutes]
    rows: list[tuple[str, str, list[int], int]] = []
    for row in reader:
        name, app = row[reader.col["HashFunction"]], row[reader.col["HashApp"]]
        if name not in run:
            reader.fail(reader.col["HashFunction"] + 1, f"function {name[:16]}... has no row in {run_path.name}")
        if app not in mem:
            reader.fail(reader.col["HashApp"] + 1, f"app {app[:16]}... has no row in {mem_path.name}")
        counts = [int(reader.number(row, reader.header[i], integer=True)) for i in minute_columns]
        rows.append((name, app, counts, reader.line))
    per_app: dict[str, int] = {}
    for _, app, _, _ in rows:
        per_app[app] = per_app.get(app, 0) + 1

    functions: list[TraceFunction] = []
    merged: list[tuple[float, int, float, float]] = []
    for index, (name, app, counts, _) in enumerate(rows):
        rng = random.Random(f"{seed}:{index}:{name}")
        run_values, mem_values = run[name], [m / per_app[app] for m in mem[app]]
        memory_mb = max(1, math.ceil(_interpolate(_MEM_POINTS, mem_values, 0.5)))
        functions.append(TraceFunction(name=name, app=app, memory_mb=memory_mb, cold_start_s=cold_start_s(memory_mb)))
        for minute, count in enumerate(counts):
            if count == 0:
                continue
            start = 60.0 * minute
            if arrivals == "uniform":
                offsets = sorted(rng.random() * 60.0 for _ in range(count))
            else:
                gaps = [rng.expovariate(1.0) for _ in range(count + 1)]
                scale, acc, offsets = 60.0 / sum(gaps), 0.0, []
                for gap in gaps[:-1]:
                    acc += gap
                    offsets.append(acc * scale)
            for offset in offsets:
                duration = _interpolate(_RUN_POINTS, run_values, rng.random())
                memory = _interpolate(_MEM_POINTS, mem_values, rng.random())
                merged.append((start + offset, index, duration, memory))
    return _build(str(inv_path), functions, merged)


def load_csv(path: str | Path, *, memory_scale: float = 1.0, cold_start_s: Callable[[int], float] = default_cold_start_s) -> Trace:
    """Load a CSV of calls with columns ``time_s, function, duration_s, memory_mb`` (and optionally ``app``)."""
    csv_path = Path(path)
    reader = _Reader(csv_path, _CSV_COLUMNS)
    app_col = reader.col.get("app")
    index: dict[str, int] = {}
    apps: list[str] = []
    samples: list[list[float]] = []
    merged: list[tuple[float, int, float, float]] = []
    for row in reader:
        name = row[reader.col["function"]].strip()
        if not name:
            reader.fail(reader.col["function"] + 1, "function: empty name")
        time_s = reader.number(row, "time_s")
        duration = reader.number(row, "duration_s")
        memory = reader.number(row, "memory_mb", low=1.0) * memory_scale
        i = index.get(name)
        if i is None:
            i = index[name] = len(apps)
            apps.append(row[app_col].strip() or name if app_col is not None else name)
            samples.append([])
        samples[i].append(memory)
        merged.append((time_s, i, duration, memory))
    functions = []
    for name, i in index.items():
        memory_mb = max(1, math.ceil(_median(samples[i])))
        functions.append(TraceFunction(name=name, app=apps[i], memory_mb=memory_mb, cold_start_s=cold_start_s(memory_mb)))
    return _build(str(csv_path), functions, merged)


def _build(source: str, functions: list[TraceFunction], merged: list[tuple[float, int, float, float]]) -> Trace:
    merged.sort(key=lambda call: call[0])  # stable: equal times keep file order
    return Trace(
        source=source,
        functions=functions,
        times=[c[0] for c in merged],
        calls=[c[1] for c in merged],
        durations=[c[2] for c in merged],
        memory=[c[3] for c in merged],
    )
