"""The app ``microfaas demo`` runs: a few functions, called cold and warm, in a table.

The functions live in this importable module so containers load them by
reference, as they would load yours. Run it with ``microfaas demo`` (or
``python -m microfaas demo``); try it over HTTP with
``microfaas serve microfaas.demo:app --invoke-api``.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import anyio

import microfaas as mf

__all__ = ["app", "classify", "fib", "greet", "hello", "run", "work"]

app = mf.App("demo")

# Stands for loading a model or opening a connection pool in a container's init.
INIT_SECONDS = 0.2


@app.function(memory_mb=64, timeout=10)
def hello(name: str = "world") -> str:
    """Say hello: the smallest possible function."""
    return f"hello, {name}"


@app.function(memory_mb=64, timeout=10)
def fib(n: int) -> int:
    """The n-th Fibonacci number, computed the slow way for small n."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


_MODEL: dict[str, float] = {}


def _load_model() -> None:
    time.sleep(INIT_SECONDS)
    _MODEL.update({"good": 1.0, "great": 1.0, "bad": -1.0, "awful": -1.0})


@app.function(memory_mb=128, timeout=10, init=_load_model)
def classify(text: str) -> dict[str, Any]:
    """A toy sentiment model whose init (loading the model) runs once per container."""
    score = sum(_MODEL.get(word.strip(".,!?").lower(), 0.0) for word in text.split())
    return {"text": text, "label": "positive" if score > 0 else "negative" if score < 0 else "neutral", "score": score}


@app.function(memory_mb=64, timeout=10)
def work(ms: int) -> int:
    """Busy for ``ms`` milliseconds (sleeping): long enough for calls to overlap."""
    time.sleep(ms / 1000)
    return ms


@app.function(memory_mb=64, timeout=10, triggers=[mf.Http("GET", "/hello/{name}")])
def greet(request: mf.HttpRequest) -> dict[str, str]:
    """An HTTP route: GET /hello/{name}?greeting=hi."""
    greeting = request.query.get("greeting", "hello")
    return {"message": f"{greeting}, {request.path_params['name']}"}


_COLUMNS = (("#", 2), ("function", 9), ("call", 24), ("start", 12), ("latency ms", 10), ("result", 0))


def _row(*cells: object) -> str:
    parts = [
        str(cell).rjust(width) if name in ("#", "latency ms") else str(cell).ljust(width)
        for (name, width), cell in zip(_COLUMNS, cells, strict=True)
    ]
    return "  ".join(parts).rstrip()


def _short(value: object, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _starts(before: mf.FunctionStats, after: mf.FunctionStats) -> str:
    cold, warm = after.cold_starts - before.cold_starts, after.warm_starts - before.warm_starts
    if cold + warm == 1:
        return "cold" if cold else "warm"
    return f"{cold} cold, {warm} warm"


async def run(out: TextIO | None = None) -> None:
    """Start the demo app on the default LocalNodes, call its functions, print a table."""
    out = out if out is not None else sys.stdout

    def say(line: str = "") -> None:
        print(line, file=out, flush=True)

    plan: list[tuple[mf.FunctionHandle[..., Any], tuple[Any, ...], str]] = [
        (hello, ("world",), "first call: a new container"),
        (hello, ("again",), "the same container, reused"),
        (fib, (90,), "another function: its own container"),
        (fib, (91,), ""),
        (classify, ("a great day",), f"init runs first (~{INIT_SECONDS * 1000:.0f} ms)"),
        (classify, ("awful film",), "init already done"),
        (work, (100,), ""),
    ]
    say("microfaas demo: each call runs in a container, a worker process forked from a warm zygote.")
    say("A cold start pays for starting the container (and the function's init); a warm start reuses one.")
    say()
    started = time.perf_counter()
    async with app.run() as faas:
        say(f"platform up in {(time.perf_counter() - started) * 1000:.0f} ms (a node: its zygote process)")
        say()
        say(_row(*(name for name, _ in _COLUMNS)))
        say(_row(*("-" * max(width, len(name)) for name, width in _COLUMNS)))
        notes: list[str] = []
        for number, (handle, args, note) in enumerate(plan, 1):
            before = faas.stats(handle.name)
            began = time.perf_counter()
            result = await handle.invoke(*args)
            elapsed = (time.perf_counter() - began) * 1000
            call = f"{handle.name}({', '.join(_short(a, 18) for a in args)})"
            say(_row(number, handle.name, call, _starts(before, faas.stats(handle.name)), f"{elapsed:.1f}", _short(result)))
            if note:
                notes.append(f"  {number}: {note}")

        # Three calls at once: one finds the warm container, the others start their own.
        before = faas.stats("work")
        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(work.invoke, 100)
        elapsed = (time.perf_counter() - began) * 1000
        number = len(plan) + 1
        say(_row(number, "work", "3 x work(100) at once", _starts(before, faas.stats("work")), f"{elapsed:.1f}", "(all three)"))
        notes.append(f"  {number}: one container is warm and it takes one call at a time, so the others start containers")

        say()
        say("notes:")
        for line in notes:
            say(line)
        say()
        header = ("function", "calls", "cold", "warm", "containers", "cold start p50 ms", "latency p50 ms")
        say(f"{header[0]:<9}  {header[1]:>5}  {header[2]:>4}  {header[3]:>4}  {header[4]:>10}  {header[5]:>17}  {header[6]:>14}")
        for name in ("hello", "fib", "classify", "work"):
            s = faas.stats(name)
            init_p50 = f"{s.init_time.p50 * 1000:.1f}" if s.init_time.p50 is not None else "-"
            latency_p50 = f"{s.latency.p50 * 1000:.1f}" if s.latency.p50 is not None else "-"
            say(
                f"{name:<9}  {s.invocations:>5}  {s.cold_starts:>4}  {s.warm_starts:>4}  "
                f"{s.containers_started:>10}  {init_p50:>17}  {latency_p50:>14}"
            )
    say()
    say("stopped: every container and the zygote are gone.")
