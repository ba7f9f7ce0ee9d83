"""mf.Executor and the blocking platform, for code that is not async.

Run it from a clone (after ``pip install -e .``)::

    python examples/executor.py

A few seconds; it leaves no processes behind. What it shows:

- ``mf.Executor`` is a ``concurrent.futures.Executor``: submit any picklable
  callable (a lambda, a closure, a function of this script), ``map`` over items;
- a task that crashes its worker, runs past ``timeout`` or goes over
  ``memory_mb`` fails only its own future, and the executor keeps serving
  (a ``ProcessPoolExecutor`` would be broken by the first);
- ``with app.run_sync() as faas`` runs an app's functions from blocking code.
"""

from __future__ import annotations

import concurrent.futures
import os
import time

import microfaas as mf


def slow_square(x: int) -> int:
    time.sleep(0.01)  # stands in for real work
    return x * x


def crash() -> None:
    os._exit(1)  # as a segfault or a C extension calling abort() would


def run_forever() -> None:
    while True:
        time.sleep(1)


def hog_memory() -> bytes:
    return b"x" * (512 * 2**20)  # 512 MB, over memory_mb


def executor_demo() -> None:
    with mf.Executor(max_workers=2, timeout=2, memory_mb=128) as ex:
        base = 100
        print("lambda:", ex.submit(lambda x: x + base, 1).result())
        print("map:", list(ex.map(slow_square, range(8))))
        print("map, chunks of 4:", list(ex.map(slow_square, range(8), chunksize=4)))

        bad = {"crash": ex.submit(crash), "timeout": ex.submit(run_forever), "memory": ex.submit(hog_memory)}
        good = [ex.submit(slow_square, i) for i in range(4)]
        for name, future in bad.items():
            error = future.exception()
            print(f"{name}: {type(error).__name__}: {str(error).splitlines()[0]}")
        print("the others:", sorted(f.result() for f in concurrent.futures.as_completed(good)))
        print("still serving:", ex.submit(slow_square, 9).result())


app = mf.App("blocking")


@app.function(max_containers=1)  # one container: every call below is warm after the first
def greet(name: str) -> str:
    return f"hello, {name} (from pid {os.getpid()})"


def blocking_demo() -> None:
    with app.run_sync() as faas:
        print(faas.invoke(greet, "world"))
        call = faas.spawn("greet", "spawned")
        print(call.result(timeout=10))
        print(list(faas.map(greet, ["a", "b"])))
        stats = faas.stats(greet)
        print(f"greet: {stats.invocations} invocations, {stats.cold_starts} cold starts")


if __name__ == "__main__":
    executor_demo()
    blocking_demo()
