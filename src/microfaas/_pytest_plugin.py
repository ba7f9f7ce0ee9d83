"""The pytest plugin behind ``microfaas.testing`` (see its docstring): the ``faas`` fixture and its hooks."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from .testing import running

if TYPE_CHECKING:
    from .app import App
    from .platform import Platform

__all__ = ["faas", "microfaas_app", "microfaas_run_options", "pytest_configure", "pytest_fixture_setup"]

_MARKER = "microfaas"


def _marker_options(node: pytest.Item) -> dict[str, Any]:
    """The ``microfaas`` markers of ``node``, outermost first, merged (the closest wins)."""
    options: dict[str, Any] = {}
    for marker in reversed(list(node.iter_markers(_MARKER))):
        if len(marker.args) > 1:
            raise pytest.UsageError(f"{node.nodeid}: @pytest.mark.microfaas takes at most one positional argument (the app)")
        if marker.args:
            options["app"] = marker.args[0]
        options.update(marker.kwargs)
    return options


# -- pytest hooks -------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "microfaas(app, **run_options): the app the `faas` fixture runs (an mf.App or 'module:attribute'), "
        "and keywords of app.run() (nodes, keep_alive, queue_limit)",
    )


@pytest.hookimpl(tryfirst=True, wrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Generator[None, Any, Any]:
    """Hand the ``faas`` fixture to the async plugin that runs the test (see the module docstring)."""
    func = fixturedef.func
    if not getattr(func, "_microfaas_fixture", False):
        return (yield)
    if "anyio_backend" in request.fixturenames:
        fixturedef.func = _faas_for_anyio  # not marked for pytest-asyncio, so only anyio wraps it
        try:
            return (yield)
        finally:
            fixturedef.func = func
    if _pytest_asyncio is None or request.node.get_closest_marker("asyncio") is None:
        pytest.fail(
            f"{request.node.nodeid}: the `faas` fixture runs in the test's event loop, so it needs an async test run by "
            "anyio's pytest plugin (@pytest.mark.anyio) or by pytest-asyncio (@pytest.mark.asyncio, or its auto mode)",
            pytrace=False,
        )
    return (yield)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def microfaas_app(request: pytest.FixtureRequest) -> App | str:
    """The app the ``faas`` fixture runs: the ``microfaas`` marker's ``app``; override this fixture to choose it in code."""
    app = _marker_options(request.node).get("app")
    if app is None:
        pytest.fail(
            f"{request.node.nodeid}: the `faas` fixture needs an app: mark the test "
            "@pytest.mark.microfaas(app=my_app) or override the `microfaas_app` fixture",
            pytrace=False,
        )
    return app  # type: ignore[no-any-return]


@pytest.fixture
def microfaas_run_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Keywords for ``app.run()``: the ``microfaas`` marker's other arguments; override this fixture to set them in code."""
    options = _marker_options(request.node)
    options.pop("app", None)
    return options


async def _faas_for_anyio(
    request: pytest.FixtureRequest, microfaas_app: App | str, microfaas_run_options: dict[str, Any]
) -> AsyncGenerator[Platform, None]:
    async with running(microfaas_app, **microfaas_run_options) as platform:
        request.addfinalizer(functools.partial(_kill_leftovers, platform))
        yield platform


async def _faas(
    request: pytest.FixtureRequest, microfaas_app: App | str, microfaas_run_options: dict[str, Any]
) -> AsyncGenerator[Platform, None]:
    """A running platform of the test's app (``microfaas_app``), stopped after the test, whatever its outcome."""
    # pytest-asyncio runs a fixture's setup and teardown in different tasks, and a platform
    # must be left in the task that entered it (its task group): a host task holds it.
    import asyncio

    ready, done = anyio.Event(), anyio.Event()
    held: list[Platform] = []
    failed: list[BaseException] = []

    async def host() -> None:
        try:
            async with running(microfaas_app, **microfaas_run_options) as platform:
                held.append(platform)
                ready.set()
                await done.wait()
        except BaseException as exc:  # noqa: BLE001 - handed to the fixture, which raises it
            failed.append(exc)
        finally:
            ready.set()

    task = asyncio.get_running_loop().create_task(host())
    await ready.wait()
    try:
        if failed:
            raise failed[0]
        request.addfinalizer(functools.partial(_kill_leftovers, held[0]))
        yield held[0]
    finally:
        done.set()
        await task
    if failed:
        raise failed[0]


def _kill_leftovers(platform: Platform) -> None:
    """After the fixture's teardown: SIGKILL what the platform still holds.

    Nothing, when the teardown ran; but a test interrupted from outside its event
    loop (pytest-timeout's signal method raises inside the loop) leaves the loop
    unable to run the teardown, and the platform's processes would outlive the test.
    """
    for pid in platform.process_ids():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


_faas._microfaas_fixture = True  # type: ignore[attr-defined]

try:
    import pytest_asyncio as _pytest_asyncio
except ImportError:  # pragma: no cover - depends on what is installed
    _pytest_asyncio = None  # type: ignore[assignment]

faas = _pytest_asyncio.fixture(_faas, name="faas") if _pytest_asyncio is not None else pytest.fixture(_faas, name="faas")
