"""Stopping a platform prints nothing of microfaas's own: no traceback from a container
stopped while it starts, while it reads its next call, or while it sends a reply."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROGRAM = textwrap.dedent(
    """
    import sys
    import time

    import anyio
    import microfaas as mf

    app = mf.App("quiet")


    @app.function
    def square(x):
        return x * x


    @app.function(concurrency=4)
    async def asquare(x):
        return x * x


    @app.function(init=lambda: time.sleep(0.3))
    def slow_start(x):
        return x


    async def main():
        async with app.run() as faas:
            if sys.argv[1] == "spawn-then-map":  # the issue's program: 10 of 10 runs printed tracebacks
                await square.spawn(3)
                async for _ in square.map(range(20)):
                    pass
            else:  # containers still starting, or with calls in flight, when the platform stops
                await slow_start.spawn(1)
                await asquare.spawn(3)
                async for _ in asquare.map(range(20)):
                    pass
        print("done")


    anyio.run(main)
    """
)


@pytest.mark.parametrize("scenario", ["spawn-then-map", "stopped-while-starting"])
def test_a_platform_stopped_with_calls_in_flight_prints_nothing(tmp_path: Path, scenario: str) -> None:
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    done = subprocess.run([sys.executable, str(program), scenario], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"
    assert done.stderr == ""  # no ConnectionResetError, BrokenPipeError or "Exception ignored"
