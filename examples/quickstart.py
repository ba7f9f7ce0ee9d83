"""microfaas quickstart: declare functions, run the platform, call them, read what happened.

Run it from a clone (after ``pip install -e .``)::

    python examples/quickstart.py

It takes a few seconds and leaves no processes behind.
"""

from __future__ import annotations

import asyncio
import os
import time

import anyio

import microfaas as mf

app = mf.App("quickstart")


# A plain sync function. Each container is a worker process; the first call pays
# for starting one (a cold start), later calls reuse it (warm starts).
@app.function(max_containers=4)
def square(x: int) -> tuple[int, bool]:
    time.sleep(0.05)  # stands in for real work
    return x * x, mf.context().cold_start


# An async function: the container runs it on its own event loop.
@app.function(timeout=5.0)
async def fetch(key: str) -> str:
    await asyncio.sleep(0.01)  # stands in for real I/O
    return f"value-of-{key}"


# init runs once in each new container, before its first call: load models,
# open connections, warm caches there.
GREETING: dict[str, str] = {}


def load_greeting() -> None:
    GREETING["text"] = "Hello"


@app.function(init=load_greeting)
def greet(name: str) -> str:
    return f"{GREETING['text']}, {name}! (container pid {os.getpid()})"


# A handler that raises: the caller gets mf.FunctionError with the remote details.
@app.function
def divide(a: float, b: float) -> float:
    return a / b


# A handler that runs past its timeout: its container is killed -> mf.FunctionTimeout.
@app.function(timeout=0.5)
def too_slow() -> None:
    time.sleep(10)


# A pinned function: one container is started with the platform and never
# released for idleness, so even the first call is warm.
@app.function(min_containers=1)
def ping() -> tuple[str, bool]:
    return "pong", mf.context().cold_start


async def main() -> None:
    async with app.run() as faas:
        print("== cold vs warm")
        for x in (2, 3):
            value, cold = await square.invoke(x)
            print(f"square({x}) = {value:<3} cold_start={cold}")
        reply, cold = await ping.invoke()
        print(f"ping() = {reply!r} cold_start={cold}  (pinned: started with the platform)")

        print("== async handler, init, call by name")
        print("fetch('a') =", await fetch.invoke("a"))
        print(await greet.invoke("Ada"))
        print(await greet.invoke("Grace"), " <- same container, init ran once")
        value, _ = await faas.invoke("square", 12)
        print("faas.invoke('square', 12) =", value)

        print("== spawn and map")
        call = await square.spawn(7)
        value, _ = await call.result()
        print(f"spawned {call.id}: result {value}, status {call.status}")
        results = [r async for r in square.map(range(10))]  # in input order
        print("square.map(range(10)) =", [value for value, _ in results])
        print(f"  {sum(cold for _, cold in results)} of them waited for a new container (max_containers=4)")

        print("== errors")
        try:
            await divide.invoke(1, 0)
        except mf.FunctionError as exc:
            print(f"FunctionError: {exc.remote_type}: {exc.remote_message}")
        try:
            await too_slow.invoke()
        except mf.FunctionTimeout as exc:
            print(f"FunctionTimeout in container {exc.container_id}: the container was killed")

        print("== containers of square")
        for info in faas.containers("square"):
            print(f"  {info.id} {info.state:<5} pid={info.pid} calls={info.calls}")

        print()
        print(f"{'function':<10} {'calls':>5} {'cold':>5} {'warm':>5} {'errors':>6} {'started':>7} {'p50 ms':>7}")
        for name in faas.function_names():
            s = faas.stats(name)
            p50 = f"{s.latency.p50 * 1000:.1f}" if s.latency.p50 is not None else "-"
            print(f"{name:<10} {s.invocations:>5} {s.cold_starts:>5} {s.warm_starts:>5} {s.errors:>6} {s.containers_started:>7} {p50:>7}")
    # Leaving the block stops every container and the zygote.


if __name__ == "__main__":
    anyio.run(main)
