"""Testing with microfaas: ``running(app)``, and the pytest plugin's ``faas`` fixture.

pytest loads the plugin (``microfaas._pytest_plugin``) through the ``pytest11``
entry point. It is inert until a test asks for ``faas``: it defines fixtures (none
autouse), registers the ``microfaas`` marker, and wraps the setup of its own
fixture only.

::

    import pytest
    import microfaas as mf
    from myproject import app

    @pytest.mark.anyio  # or @pytest.mark.asyncio with pytest-asyncio
    @pytest.mark.microfaas(app=app, nodes=mf.LocalNodes(max_nodes=2))
    async def test_orders_are_billed(faas):
        await faas.topic("orders").publish({"id": 1})
        await faas.drain(timeout=30)
        assert faas.dead_letters("bill") == []

The marker takes ``app`` (an ``mf.App``, or ``"package.module:attribute"``) and
any keyword of ``app.run()`` (``nodes``, ``keep_alive``, ``queue_limit``). Markers
on the module, class and test merge, the closest winning. Instead of the marker,
override the ``microfaas_app`` (and ``microfaas_run_options``) fixtures, for example
in a ``conftest.py``.

Which async plugin runs the fixture. Under anyio's plugin (the test uses the
``anyio_backend`` fixture, as ``@pytest.mark.anyio`` tests do), anyio runs it in
the test's event loop. Otherwise, with pytest-asyncio, it is an asyncio fixture
(``pytest_asyncio.fixture``) run in the test's loop. A test that neither plugin
runs gets a clear error rather than a platform in no event loop.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import App
    from .platform import Platform

__all__ = ["running"]


@contextlib.asynccontextmanager
async def running(app: App | str, /, **run_options: Any) -> AsyncIterator[Platform]:
    """Run ``app`` for the length of a test: ``async with running(app) as faas: ...``.

    The same as ``async with app.run(**run_options)``, except that every lifecycle
    event is kept (``faas.events()`` is not capped). Leaving the block, normally, by
    an exception or by cancellation (a timeout), stops every container and node.

    :param app: an ``mf.App``, or where to import one from: ``"package.module:attribute"``.
    :param run_options: keywords of ``app.run()``: ``nodes``, ``keep_alive``, ``queue_limit``.
    """
    platform = _resolve_app(app).run(**{"events_kept": None, **run_options})
    async with platform:
        yield platform


def _resolve_app(app: App | str) -> App:
    from .app import App

    if isinstance(app, str):
        module_name, _, attribute = app.partition(":")
        if not attribute:
            raise ValueError(f"microfaas: an app given as a string must be 'package.module:attribute', got {app!r}")
        app = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(app, App):
        raise TypeError(f"microfaas: app must be an mf.App (or 'package.module:attribute' naming one), got {app!r}")
    return app
