"""Cold starts of functions that import real packages: numpy, jinja2, networkx and Pillow.

    python -m benchmarks.cold_real [--quick] [--json PATH]

Each sample is a fresh container (``idle_timeout=0``), timed from ``invoke`` to its
result after the previous container exited, as in ``benchmarks/cold.py``. Two
functions: ``imports`` imports the four packages (what the ratio key measures:
the imports' share of a cold start), ``uses`` also uses each a little (a jinja2
template compiled and rendered, a shortest path, an image, an array sum), which
a fresh process pays for on top (first runs of library code, pages it writes).
Three ways:

- ``none``: ``LocalNodes(learn_imports=False)``, nothing preloaded: every container imports them;
- ``declared``: ``App(preload=REAL)``, learning off;
- ``learned``: the default ``LocalNodes()``; the first cold starts teach the zygote, which
  preloads what they imported; the samples are taken once it has.

Beside them, a no-op function's cold start on the same platform as the learned run,
for ``cold_start_real_vs_noop`` (learned / no-op). Memory, read once the zygote has
preloaded the packages: the zygote's PSS and one idle container's USS and PSS (MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import anyio

import microfaas as mf
from microfaas import lifecycle as ev

from .common import log
from .memory import MIB
from .peers import noop

REAL = ("numpy", "jinja2", "networkx", "PIL.Image")


def imports(x: object) -> int:
    import jinja2
    import networkx
    import numpy
    import PIL.Image

    del jinja2, networkx, numpy, PIL
    return os.getpid()


def uses(x: object) -> int:
    import jinja2
    import networkx
    import numpy
    import PIL.Image

    numpy.arange(16).reshape(4, 4).sum()
    jinja2.Template("{{ x }}").render(x=x)
    networkx.shortest_path(networkx.path_graph(4), 0, 3)
    PIL.Image.new("RGB", (4, 4)).getpixel((0, 0))
    return os.getpid()


def missing() -> str | None:
    """Why the figures cannot be measured here (a package is not installed), or None."""
    import importlib.util

    absent = [name for name in REAL if importlib.util.find_spec(name.partition(".")[0]) is None]
    return f"{', '.join(absent)} not installed" if absent else None


def config(quick: bool) -> dict[str, int]:
    return {"real": 6 if quick else 20, "noop": 15 if quick else 60}


async def _samples(faas: mf.Platform, handle: mf.FunctionHandle[..., Any], n: int) -> list[float]:
    out = []
    name = handle.spec.name
    for _ in range(n):
        with anyio.fail_after(60):
            while faas.containers(name):  # noqa: ASYNC110 - wait until the last container was released
                await anyio.sleep(0.001)
        t0 = time.perf_counter()
        await handle.invoke(None)
        out.append(time.perf_counter() - t0)
    return out


def _p50_ms(samples: list[float]) -> dict[str, Any]:
    return {"p50_ms": statistics.median(samples) * 1e3, "min_ms": min(samples) * 1e3, "n": len(samples)}


async def _learned(faas: mf.Platform) -> None:
    """Wait until a zygote has preloaded what the containers reported."""
    with anyio.move_on_after(120):
        while not any(e.detail["learned"] and "numpy" in e.detail["preloaded"] for e in faas.events(kind=ev.ZYGOTE_PRELOADED)):  # noqa: ASYNC110
            await anyio.sleep(0.01)
        return
    seen = [(e.kind, dict(e.detail)) for e in faas.events(kind=[ev.ZYGOTE_PRELOADED, ev.PRELOAD_REFUSED])]
    raise RuntimeError(f"the zygote did not learn numpy within 120 s; its preload events: {seen}")


def _memory(faas: mf.Platform, name: str) -> dict[str, float]:
    import psutil

    [container] = faas.containers(name)
    assert container.pid is not None
    zygote = psutil.Process(container.pid).parent()
    mine, theirs = psutil.Process(container.pid).memory_full_info(), zygote.memory_full_info()
    return {
        "zygote_pss_mb": theirs.pss / MIB,
        "zygote_rss_mb": theirs.rss / MIB,
        "container_uss_mb": mine.uss / MIB,
        "container_pss_mb": mine.pss / MIB,
    }


async def _run(way: str, cfg: dict[str, int]) -> dict[str, Any]:
    app = mf.App(f"cold_real_{way}", preload=REAL if way == "declared" else ())
    handles = {fn.__name__: app.function(fn, name=fn.__name__, idle_timeout=0.0, timeout=120) for fn in (imports, uses)}
    idle = app.function(uses, name="uses_idle", idle_timeout=None, timeout=120)
    out: dict[str, Any] = {}
    async with app.run(nodes=mf.LocalNodes(learn_imports=way == "learned")) as faas:
        if way == "learned":
            await handles["uses"].invoke(None)  # what the zygote learns from
            await _learned(faas)
        for name, handle in handles.items():
            out[name] = _p50_ms(await _samples(faas, handle, cfg["real"]))
        await idle.invoke(None)
        out["memory"] = _memory(faas, "uses_idle")
        out["preloaded"] = sorted({m for e in faas.events(kind=ev.ZYGOTE_PRELOADED) for m in e.detail["preloaded"]})
    return out


async def _noop(n: int) -> dict[str, Any]:
    app = mf.App("cold_real_noop")
    handle = app.function(noop, name="noop", idle_timeout=0.0)
    async with app.run() as faas:
        return _p50_ms(await _samples(faas, handle, n))


async def measure(quick: bool) -> dict[str, Any]:
    """Cold start p50 of the real function (none, declared, learned), the no-op's, and the memory figures."""
    cfg = config(quick)
    results: dict[str, Any] = {"config": cfg}
    for way in ("none", "declared", "learned"):
        log(f"real-import cold starts: {way} x {cfg['real']}")
        results[way] = await _run(way, cfg)
    log(f"no-op cold starts x {cfg['noop']}")
    results["noop"] = await _noop(cfg["noop"])
    return results


def ratios(figures: dict[str, Any]) -> dict[str, float]:
    noop_ms = figures["noop"]["p50_ms"]
    return {
        "cold_start_real_vs_noop": figures["learned"]["imports"]["p50_ms"] / noop_ms,
        "cold_start_real_declared_vs_noop": figures["declared"]["imports"]["p50_ms"] / noop_ms,
        "cold_start_real_uses_vs_noop": figures["learned"]["uses"]["p50_ms"] / noop_ms,
        "cold_start_real_none_vs_learned": figures["none"]["imports"]["p50_ms"] / figures["learned"]["imports"]["p50_ms"],
    }


def rows(figures: dict[str, Any] | None, row: Any, width: int) -> list[list[str]]:
    """Table rows: each way's p50 in the microfaas column, the memory of the learned zygote."""
    if not figures:
        return []
    none: list[float | None] = [None] * (width - 1)

    def ms(way: str, function: str) -> float:
        return float(figures[way][function]["p50_ms"])

    memory = figures["learned"]["memory"]
    return [
        row("cold start, real imports, none (ms)", [figures["none"]["imports"]["p50_ms"], *none]),
        row("cold start, real imports, declared (ms)", [ms("declared", "imports"), *none], "cold_start_real_declared_vs_noop"),
        row("cold start, real imports, learned (ms)", [figures["learned"]["imports"]["p50_ms"], *none], "cold_start_real_vs_noop"),
        row("cold start, real imports used, none (ms)", [figures["none"]["uses"]["p50_ms"], *none]),
        row("cold start, real imports used, learned (ms)", [figures["learned"]["uses"]["p50_ms"], *none], "cold_start_real_uses_vs_noop"),
        row("preloaded zygote PSS (MiB)", [memory["zygote_pss_mb"], *none]),
        row("container on it, USS (MiB)", [memory["container_uss_mb"], *none]),
    ]


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cold_real", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    figures = anyio.run(measure, args.quick)
    for way in ("none", "declared", "learned"):
        imports_ms, uses_ms = figures[way]["imports"]["p50_ms"], figures[way]["uses"]["p50_ms"]
        memory = ", ".join(f"{key} {value:.1f}" for key, value in figures[way]["memory"].items())
        print(f"{way:9s} p50 imports {imports_ms:8.2f} ms, uses {uses_ms:8.2f} ms; {memory}")
    print(f"no-op     p50 {figures['noop']['p50_ms']:8.2f} ms")
    for key, value in ratios(figures).items():
        print(f"{key} = {value:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": figures, "ratios": ratios(figures)}, f, indent=2)


if __name__ == "__main__":
    cli()
