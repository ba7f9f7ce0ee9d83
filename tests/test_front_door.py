"""The errors a user meets first are the documented types, each with a message that says what to do."""

from __future__ import annotations

import pytest

import microfaas as mf


def test_an_unknown_setting_names_the_closest_one():
    app = mf.App("settings")
    with pytest.raises(ValueError, match=r"unknown function setting 'memory'; did you mean 'memory_mb'\?") as info:
        app.function(memory=256)(print)  # type: ignore[call-arg]
    assert "timeout" in str(info.value)  # the message lists the settings there are
    assert app.functions == {}


def test_a_lambda_without_a_name_is_told_to_pass_one():
    app = mf.App("lambdas")
    with pytest.raises(ValueError, match=r"a lambda has no name .*pass name="):
        app.function(lambda x: x)
    double = app.function(name="double")(lambda x: 2 * x)
    assert double.local(4) == 8


@pytest.mark.anyio
async def test_memory_larger_than_any_node_is_a_plain_value_error():
    app = mf.App("huge")

    @app.function(memory_mb=10**9)
    def big() -> int:
        return 1

    with pytest.raises(ValueError, match=r"big: memory_mb=1000000000 does not fit on a node") as info:
        async with app.run(nodes=mf.LocalNodes(node_memory_mb=512)):
            pass
    assert not isinstance(info.value, BaseExceptionGroup)
    assert app._platform is None  # the app can run again


@pytest.mark.anyio
async def test_an_undeclared_topic_or_stream_is_an_unknown_source_not_a_function():
    app = mf.App("sources")
    app.topic("orders")

    @app.function
    def noop() -> None:
        return None

    async with app.run() as faas:
        with pytest.raises(mf.UnknownSource, match=r"no topic 'payments'; it has: orders") as info:
            faas.topic("payments")
        assert not isinstance(info.value, mf.UnknownFunction)
        assert isinstance(info.value, LookupError)
        with pytest.raises(mf.UnknownSource, match=r"no stream 'clicks'; it has: none"):
            faas.stream("clicks")
