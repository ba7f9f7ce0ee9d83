"""Preloaded zygotes: declared and learned modules are inherited, unsafe ones are refused, learning is capped.

The modules these tests preload are written to a temporary directory on ``sys.path``
(outside the working directory, so a container may learn them). Each appends its
process id to a log file every time it is imported, so the log tells which processes
imported it: the probe and the zygote once each, a container only if it did not inherit it.
"""

from __future__ import annotations

import os
import pathlib
import sys
import textwrap
import uuid
from collections.abc import Iterator

import psutil
import pytest

import microfaas as mf
from conftest import wait_until
from microfaas import lifecycle as ev
from microfaas.nodes import preloading

pytestmark = pytest.mark.anyio

app = mf.App("preload")


@app.function(idle_timeout=0, timeout=60)
def imports(*modules: str) -> int:
    import importlib

    for name in modules:
        importlib.import_module(name)
    return os.getpid()


@app.function(idle_timeout=0, timeout=60)
def random_state() -> tuple[float, float]:
    import random

    import numpy

    return random.random(), float(numpy.random.random())


@pytest.fixture
def modules(tmp_path: pathlib.Path) -> Iterator[ModuleMaker]:
    maker = ModuleMaker(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        yield maker
    finally:
        sys.path.remove(str(tmp_path))
        for name in maker.names:
            sys.modules.pop(name, None)


class ModuleMaker:
    def __init__(self, where: pathlib.Path) -> None:
        self.where = where
        self.names: list[str] = []

    def make(self, body: str = "") -> str:
        """A new module that logs each import of it to ``<name>.log``; its name."""
        name = f"m_{uuid.uuid4().hex[:10]}"
        log = self.where / f"{name}.log"
        source = f"import os\nwith open({str(log)!r}, 'a') as _f:\n    _f.write(f'{{os.getpid()}}\\n')\n" + textwrap.dedent(body)
        (self.where / f"{name}.py").write_text(source)
        self.names.append(name)
        return name

    def importers(self, name: str) -> list[int]:
        log = self.where / f"{name}.log"
        return [int(line) for line in log.read_text().split()] if log.exists() else []


async def cold_starts(faas: mf.Platform, n: int, *modules: str) -> list[int]:
    """``n`` calls of ``imports``, each in a new container; the containers' pids."""
    pids = []
    for _ in range(n):
        await wait_until(lambda: faas.containers("imports") == [])
        pids.append(await imports.invoke(*modules))
    return pids


async def test_declared_modules_are_imported_once_by_the_zygote_and_inherited(modules: ModuleMaker) -> None:
    name = modules.make()
    declared = mf.App("declared", preload=(name,))
    handle = declared.function(imports.spec.fn, name="imports", idle_timeout=0, timeout=60)
    async with declared.run() as faas:
        pids = []
        for _ in range(3):
            await wait_until(lambda: faas.containers("imports") == [])
            pids.append(await handle.invoke(name))
        [preloaded] = faas.events(kind=ev.ZYGOTE_PRELOADED)
        assert name in preloaded.detail["modules"] and preloaded.detail["learned"] is False
        assert preloaded.detail["rss_mb"] > 0 and preloaded.detail["import_s"] >= 0
    importers = modules.importers(name)
    assert len(importers) == 2  # the probe and the zygote
    assert not set(importers) & set(pids)  # no container imported it again
    assert len(set(pids)) == 3


async def test_a_container_shows_what_it_inherited(modules: ModuleMaker) -> None:
    name = modules.make()
    declared = mf.App("shows", preload=(name,))
    handle = declared.function(imports.spec.fn, name="imports", idle_timeout=None, timeout=60)
    async with declared.run() as faas:
        await handle.invoke()
        [info] = faas.containers("imports")
        assert name in info.preloaded


async def test_learned_modules_are_preloaded_for_later_cold_starts(modules: ModuleMaker) -> None:
    name = modules.make()
    async with app.run(nodes=mf.LocalNodes(learn_imports=True)) as faas:
        [first] = await cold_starts(faas, 1, name)
        assert modules.importers(name) == [first]  # it was not preloaded yet: the container imported it
        await wait_until(lambda: any(e.detail["learned"] for e in faas.events(kind=ev.ZYGOTE_PRELOADED)))
        [learned] = [e for e in faas.events(kind=ev.ZYGOTE_PRELOADED) if e.detail["learned"]]
        assert name in learned.detail["modules"]
        later = await cold_starts(faas, 3, name)
    importers = modules.importers(name)
    assert len(importers) == 3  # the first container, the probe, the zygote
    assert not set(importers) & set(later)


async def test_without_learning_every_container_imports_for_itself(modules: ModuleMaker) -> None:
    name = modules.make()
    async with app.run(nodes=mf.LocalNodes(learn_imports=False)) as faas:
        pids = await cold_starts(faas, 3, name)
        assert not [e for e in faas.events(kind=ev.ZYGOTE_PRELOADED) if e.detail["learned"]]
    assert modules.importers(name) == pids


async def test_learning_stops_at_its_cap(modules: ModuleMaker) -> None:
    first, second = modules.make(), modules.make()
    async with app.run(nodes=mf.LocalNodes(max_learned_packages=1)) as faas:
        await cold_starts(faas, 1, first, second)
        await wait_until(lambda: any(e.detail["learned"] for e in faas.events(kind=ev.ZYGOTE_PRELOADED)))
        later = await cold_starts(faas, 2, first, second)
        [learned] = [e for e in faas.events(kind=ev.ZYGOTE_PRELOADED) if e.detail["learned"]]
    assert len([m for m in (first, second) if m in learned.detail["modules"]]) == 1
    kept_out = second if first in learned.detail["modules"] else first
    assert set(later) <= set(modules.importers(kept_out))  # every later container imported it itself


async def test_a_module_that_starts_a_thread_is_refused_and_the_function_still_works(modules: ModuleMaker) -> None:
    name = modules.make("import threading\nthreading.Thread(target=threading.Event().wait, daemon=True).start()\n")
    declared = mf.App("threads", preload=(name,))
    handle = declared.function(imports.spec.fn, name="imports", idle_timeout=None, timeout=60)
    async with declared.run() as faas:
        pid = await handle.invoke(name)
        [refused] = faas.events(kind=ev.PRELOAD_REFUSED)
        assert refused.detail == {"module": name, "reason": "its import started 1 thread(s)", "learned": False}
        [preloaded] = faas.events(kind=ev.ZYGOTE_PRELOADED)
        assert name not in preloaded.detail["preloaded"]
        [zygote] = [p for p in psutil.Process().children() if "microfaas.nodes.zygote" in " ".join(p.cmdline())]
        assert zygote.num_threads() == 1
    _probe, container = modules.importers(name)  # not tried again when the container reported it
    assert container == pid  # the container imported it itself


async def test_a_module_whose_import_raises_does_not_break_the_function(modules: ModuleMaker) -> None:
    name = modules.make("raise RuntimeError('not here')\n")
    declared = mf.App("raises", preload=(name, "no_such_module_at_all"))
    handle = declared.function(imports.spec.fn, name="imports", idle_timeout=None, timeout=60)
    async with declared.run() as faas:
        assert await handle.invoke() > 0
        reasons = {e.detail["module"]: e.detail["reason"] for e in faas.events(kind=ev.PRELOAD_REFUSED)}
        assert reasons[name] == "its import raised RuntimeError('not here')"
        assert reasons["no_such_module_at_all"].startswith("its import raised ModuleNotFoundError")
        with pytest.raises(mf.FunctionError, match="not here"):
            await handle.invoke(name)


async def test_forked_containers_do_not_share_random_state() -> None:
    seeded = mf.App("seeded", preload=("numpy", "random"))
    handle = seeded.function(random_state.spec.fn, name="random_state", idle_timeout=0, timeout=60)
    async with seeded.run() as faas:
        draws = []
        for _ in range(3):
            await wait_until(lambda: faas.containers("random_state") == [])
            draws.append(await handle.invoke())
    assert len({python for python, _ in draws}) == 3
    assert len({numpy for _, numpy in draws}) == 3


def test_preload_bad_names_are_refused_at_declaration() -> None:
    with pytest.raises(ValueError, match="preload must be a tuple of module names"):
        mf.App("bad", preload="numpy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="module names like"):
        mf.App("bad", preload=("not a module",))


# -- the probe, in this process ------------------------------------------------------------------


def test_the_probe_refuses_what_takes_too_long_starts_threads_or_is_too_big(modules: ModuleMaker) -> None:
    slow = modules.make("import time\ntime.sleep(30)\n")
    threads = modules.make("import threading\nthreading.Thread(target=threading.Event().wait, daemon=True).start()\n")
    big = modules.make("BLOB = bytearray(64 * 2**20)\n")
    fine = modules.make()
    blas_threads = os.environ.get("OPENBLAS_NUM_THREADS")
    done = preloading.preload([slow, threads, big, fine], memory_mb=preloading.resident_mb() + 32, limit_s=0.5)
    assert done.refused[slow] == "its import took longer than 0.5s"
    assert done.refused[threads] == "its import started 1 thread(s)"
    assert "past its cap" in done.refused[big]
    assert done.imported == [fine] and fine in sys.modules
    assert not {slow, threads, big} & set(sys.modules)  # the refused never ran here
    assert len(modules.importers(fine)) == 2 and os.getpid() in modules.importers(fine)
    assert os.environ.get("OPENBLAS_NUM_THREADS") == blas_threads  # set for the imports only


def test_learning_keeps_each_module_once_and_counts_packages() -> None:
    from microfaas.runtime.learning import ImportLearner

    learner = ImportLearner(max_packages=2)
    assert learner.learn(["numpy", "numpy.linalg", "jinja2"]) == ["numpy", "numpy.linalg", "jinja2"]
    assert learner.learn(["numpy", "numpy.fft", "networkx"]) == ["numpy.fft"]
    assert learner.capped and learner.packages == {"numpy", "jinja2"}
    assert learner.learn(["random", "_csv", "csv", "xml.etree"]) == ["random", "_csv", "csv", "xml.etree"]  # not counted
    assert learner.packages == {"numpy", "jinja2"}
    learner.refused("jinja2")
    assert learner.learned == ["numpy", "numpy.linalg", "numpy.fft", "random", "_csv", "csv", "xml.etree"]
    assert learner.learn(["jinja2"]) == []  # refused: not asked for again


# -- the spare -------------------------------------------------------------------------------------


def _spares(faas: mf.Platform) -> list[psutil.Process]:
    [zygote] = [p for p in psutil.Process().children() if "microfaas.nodes.zygote" in " ".join(p.cmdline())]
    containers = {c.pid for c in faas.containers()}
    spares = []
    for child in zygote.children():
        try:
            if child.pid not in containers and child.status() != psutil.STATUS_ZOMBIE:
                spares.append(child)
        except psutil.NoSuchProcess:
            pass
    return spares


async def test_a_cold_start_takes_the_waiting_spare_and_a_new_one_is_forked() -> None:
    async with app.run() as faas:
        await wait_until(lambda: len(_spares(faas)) == 1)
        [spare] = _spares(faas)
        [pid] = await cold_starts(faas, 1)
        assert pid == spare.pid  # the container is the spare that waited
        await wait_until(lambda: [p.pid for p in _spares(faas)] not in ([], [spare.pid]))


async def test_a_spare_killed_while_it_waits_is_replaced_and_cold_starts_still_work() -> None:
    async with app.run() as faas:
        await wait_until(lambda: len(_spares(faas)) == 1)
        [spare] = _spares(faas)
        spare.kill()
        await wait_until(lambda: [p.pid for p in _spares(faas)] not in ([], [spare.pid]))
        [pid] = await cold_starts(faas, 1)
        assert pid != spare.pid
        assert not faas.events(kind=ev.START_FAILED)


async def test_after_a_cold_start_waited_for_its_spare_the_next_spare_is_forked_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Cold starts coming faster than spares are made: waiting SPARE_DELAY before each fork
    # would leave every next one waiting too. With a delay no test outlasts, a spare that
    # shows up at all was forked at once.
    from microfaas import pool

    monkeypatch.setattr(pool, "SPARE_DELAY", 3600.0)
    async with app.run() as faas:
        assert _spares(faas) == []  # the first spare waits out its delay
        [pid] = await cold_starts(faas, 1)  # it finds none ready: it has it forked now, and waits
        await wait_until(lambda: len(_spares(faas)) == 1)
        [spare] = _spares(faas)
        assert spare.pid != pid
        [second] = await cold_starts(faas, 1)
        assert second == spare.pid


@app.function(idle_timeout=0, timeout=60)
def imports_beside_a_thread(name: str) -> int:
    import importlib
    import threading

    threading.Thread(target=threading.Event().wait, daemon=True).start()  # a library's worker thread
    importlib.import_module(name)
    return os.getpid()


async def test_a_container_stopped_right_after_its_first_reply_still_reports_its_imports(modules: ModuleMaker) -> None:
    # The platform sends SIGTERM as soon as the reply arrives (idle_timeout=0); with a second
    # thread in the container, a signal blocked in the main thread alone would be taken there.
    name = modules.make()
    async with app.run() as faas:
        await imports_beside_a_thread.invoke(name)
        await wait_until(lambda: any(e.detail["learned"] for e in faas.events(kind=ev.ZYGOTE_PRELOADED)))
        [learned] = [e for e in faas.events(kind=ev.ZYGOTE_PRELOADED) if e.detail["learned"]]
        assert name in learned.detail["modules"]
        await wait_until(lambda: faas.events(kind=ev.CONTAINER_EXITED, function="imports_beside_a_thread"))
        [exited] = faas.events(kind=ev.CONTAINER_EXITED, function="imports_beside_a_thread")
        assert exited.detail["returncode"] == 128 + 15  # it still ended on its SIGTERM
