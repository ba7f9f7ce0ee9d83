"""Profile the microfaas side of one figure with pyinstrument (or cProfile).

    python -m benchmarks.profile {throughput,payload,warm} [--cprofile] [--html PATH]

Runs only microfaas (no peers), after a warm-up, and profiles the platform's
process; the containers are separate processes (use py-spy on their pids to
look inside them: ``py-spy record --pid PID``).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats

import anyio

import microfaas as mf
from benchmarks import peers
from benchmarks.payload import SIZE


async def workload(figure: str, profile_run: object) -> None:
    app = mf.App("profile")
    handle = app.function(peers.noop, name="noop", max_containers=peers.WORKERS, idle_timeout=None)
    async with app.run(nodes=mf.LocalNodes()) as faas:
        m = peers.Microfaas(faas, handle)
        data = os.urandom(SIZE)
        await m.many(500)
        print("containers:", [c.pid for c in faas.containers("noop")])

        async def run() -> None:
            if figure == "throughput":
                await m.many(10_000)
            elif figure == "payload":
                for _ in range(30):
                    await m.call(data)
            else:
                for _ in range(5_000):
                    await m.call(None)

        await profile_run(run)  # type: ignore[operator]


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("figure", choices=["throughput", "payload", "warm"])
    parser.add_argument("--cprofile", action="store_true", help="cProfile (sorted by tottime) instead of pyinstrument")
    parser.add_argument("--html", metavar="PATH", help="also write pyinstrument's HTML report")
    args = parser.parse_args()

    async def profile_run(run: object) -> None:
        if args.cprofile:
            prof = cProfile.Profile()
            prof.enable()
            await run()  # type: ignore[operator]
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)
            return
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="enabled", interval=0.0005)
        profiler.start()
        await run()  # type: ignore[operator]
        profiler.stop()
        print(profiler.output_text(unicode=False, color=False, show_all=False))
        if args.html:
            await anyio.Path(args.html).write_text(profiler.output_html())

    anyio.run(workload, args.figure, profile_run)


if __name__ == "__main__":
    cli()
