"""Every process the platform starts, it stops: checked by pid on every way out of the block."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import anyio
import psutil
import pytest

import microfaas as mf
from conftest import pid_alive

pytestmark = pytest.mark.anyio

app = mf.App("processes")


@app.function
def pid() -> int:
    return os.getpid()


@app.function(timeout=60)
def busy(seconds: float) -> None:
    time.sleep(seconds)


@app.function(min_containers=1)
def pinned() -> int:
    return os.getpid()


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}


async def _wait_gone(pids: set[int]) -> set[int]:
    with anyio.move_on_after(20):
        while any(pid_alive(p) for p in pids):
            await anyio.sleep(0.02)
    return {p for p in pids if pid_alive(p)}


async def test_no_process_outlives_a_normal_exit():
    async with app.run() as faas:
        worker_pids = {await pid.invoke(), await pinned.invoke()}
        started = _descendants()
        assert worker_pids <= started
        assert len(started) >= 3  # the zygote and two containers
        assert {c.pid for c in faas.containers()} == worker_pids
    assert await _wait_gone(started) == set()


async def test_no_process_outlives_an_exception_in_the_block():
    started: set[int] = set()
    with pytest.raises(ZeroDivisionError):
        async with app.run():
            await pid.invoke()
            started = _descendants()
            1 / 0  # noqa: B018
    assert started
    assert await _wait_gone(started) == set()


async def test_no_process_outlives_cancellation_with_calls_in_flight():
    started: set[int] = set()
    outcomes: list[BaseException] = []
    with anyio.CancelScope() as scope:
        async with app.run() as faas, anyio.create_task_group() as tg:

            async def call() -> None:
                try:
                    await busy.invoke(30)
                except BaseException as exc:
                    outcomes.append(exc)
                    raise

            for _ in range(3):
                tg.start_soon(call)
            with anyio.fail_after(60):
                while len(faas.containers("busy")) < 3 or any(c.state != "busy" for c in faas.containers("busy")):
                    await anyio.sleep(0.01)
            started = _descendants()
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    # Each caller sees its own cancellation, not a FaaSError made of it.
    cancelled = anyio.get_cancelled_exc_class()
    assert len(outcomes) == 3 and all(type(exc) is cancelled for exc in outcomes), outcomes
    assert len(started) >= 4  # the zygote and three busy containers
    assert await _wait_gone(started) == set()


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
async def test_every_start_method_reaps_its_workers(start_method):
    async with app.run(nodes=mf.LocalNodes(start_method=start_method)):
        await pid.invoke()
        started = _descendants()
    assert started
    assert await _wait_gone(started) == set()


def test_functions_defined_in_main_work(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import anyio
            import microfaas as mf

            app = mf.App("script")
            GREETING = "hello"

            class Point:
                def __init__(self, x):
                    self.x = x

            @app.function
            def greet(name):
                return f"{GREETING} {name}"

            @app.function
            def shift(p):
                return Point(p.x + 1)

            async def main():
                async with app.run() as faas:
                    print(await greet.invoke("world"))
                    print((await shift.invoke(Point(41))).x)

            if __name__ == "__main__":
                anyio.run(main)
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["hello", "world", "42"]
