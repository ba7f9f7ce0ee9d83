"""Declaring functions: settings are attrs records validated at decoration time."""

from __future__ import annotations

import pytest

import microfaas as mf


def test_bare_decorator_uses_defaults():
    app = mf.App("declare")

    @app.function
    def resize(x: int) -> int:
        return x * 2

    spec = app.functions["resize"]
    assert isinstance(resize, mf.FunctionHandle)
    assert (spec.memory_mb, spec.timeout, spec.concurrency, spec.min_containers) == (128, 30.0, 1, 0)
    assert (spec.max_containers, spec.idle_timeout, spec.init, spec.retries) == (None, 60.0, None, mf.Retries())
    assert spec.triggers == ()
    assert resize(21) == 42  # still a plain function


def test_settings_are_recorded():
    app = mf.App("declare")

    def setup() -> None:
        pass

    @app.function(
        memory_mb=256,
        timeout=5,
        concurrency=4,
        min_containers=1,
        max_containers=3,
        idle_timeout=None,
        init=setup,
        retries=2,
        name="renamed",
    )
    async def handler() -> None:
        pass

    spec = app.functions["renamed"]
    assert handler.name == "renamed"
    assert spec.is_async
    assert (spec.memory_mb, spec.timeout, spec.concurrency) == (256, 5, 4)
    assert (spec.min_containers, spec.max_containers, spec.idle_timeout) == (1, 3, None)
    assert spec.init is setup
    assert spec.retries == mf.Retries(max_retries=2)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("memory_mb", 0),
        ("memory_mb", -5),
        ("memory_mb", 1.5),
        ("memory_mb", True),
        ("timeout", 0),
        ("timeout", -1.0),
        ("timeout", "10"),
        ("concurrency", 0),
        ("min_containers", -1),
        ("max_containers", 0),
        ("idle_timeout", -0.1),
        ("init", 42),
        ("retries", -1),
        ("retries", "3"),
        ("triggers", ["not a trigger"]),
        ("name", "has space"),
        ("name", ""),
    ],
)
def test_bad_setting_raises_value_error_naming_the_field(field, value):
    app = mf.App("declare")

    def handler() -> None:
        pass

    with pytest.raises(ValueError, match=field):
        app.function(**{field: value})(handler)
    assert app.functions == {}


def test_value_error_names_the_function():
    app = mf.App("declare")
    with pytest.raises(ValueError, match=r"resize: memory_mb must be an int >= 1, got 0"):

        @app.function(memory_mb=0)
        def resize() -> None:
            pass


def test_min_containers_above_max_containers_is_rejected():
    app = mf.App("declare")
    with pytest.raises(ValueError, match="min_containers"):
        app.function(min_containers=3, max_containers=2)(test_app_name_is_validated)


def test_duplicate_names_are_rejected():
    app = mf.App("declare")
    app.function(name="f")(lambda: None)
    with pytest.raises(ValueError, match="already has a function named 'f'"):
        app.function(name="f")(lambda: None)


def test_retries_record_validates_and_computes_delays():
    retries = mf.Retries(max_retries=3, initial_delay=0.5, backoff=2.0, max_delay=1.5)
    assert [retries.delay(n) for n in (1, 2, 3)] == [0.5, 1.0, 1.5]
    with pytest.raises(ValueError, match="backoff"):
        mf.Retries(backoff=0.5)
    with pytest.raises(ValueError, match="max_retries"):
        mf.Retries(max_retries=-1)
    assert mf.Retries(2) == mf.Retries(max_retries=2)


def test_app_name_is_validated():
    with pytest.raises(ValueError, match="name"):
        mf.App("")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_nodes": 0}, "max_nodes"),
        ({"max_nodes": None}, "max_nodes"),
        ({"node_memory_mb": 0}, "node_memory_mb"),
        ({"acquire_delay": -1}, "acquire_delay"),
        ({"release_after": -1}, "release_after"),
        ({"start_method": "forkserver"}, "start_method"),
        ({"min_nodes": 2}, "min_nodes"),
    ],
)
def test_local_nodes_validates(kwargs, field):
    with pytest.raises(ValueError, match=field):
        mf.LocalNodes(**kwargs)


def test_local_runs_in_this_process_with_a_context():
    app = mf.App("declare")

    @app.function(memory_mb=64)
    def who() -> tuple[str, int | None, bool]:
        ctx = mf.context()
        return ctx.function_name, ctx.memory_mb, ctx.cold_start

    assert who.local() == ("who", 64, False)
    with pytest.raises(RuntimeError, match="outside an invocation"):
        mf.context()


@pytest.mark.anyio
async def test_local_async_handler_sees_its_context():
    app = mf.App("declare")

    @app.function
    async def who() -> str:
        return mf.context().function_name

    assert await who.local() == "who"


@pytest.mark.anyio
async def test_calls_outside_the_platform_raise_platform_closed():
    app = mf.App("declare")
    f = app.function(lambda: 1, name="f")
    with pytest.raises(mf.PlatformClosed, match="not running"):
        await f.invoke()
