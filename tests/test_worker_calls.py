"""One call in the container, sync or async: the reply record each outcome becomes (``worker.run_call``)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from microfaas import events, payload, protocol, worker


def _bundle(fn: object) -> worker.Bundle:
    return worker.Bundle(name="f", fn=fn, init=None, memory_mb=128, concurrency=1)  # type: ignore[arg-type]


CTX = events.Context(
    invocation_id="inv-1", function_name="f", attempt=1, cold_start=False, deadline=None, memory_mb=128, container_id="c-1"
)


def double(x: int) -> int:
    assert events.context().invocation_id == "inv-1"  # the handler sees its call's context
    return 2 * x


async def double_later(x: int) -> int:
    await asyncio.sleep(0)
    assert events.context().invocation_id == "inv-1"
    return 2 * x


def fail(x: int) -> int:
    raise ValueError(f"no {x}")


def unpicklable(x: int) -> object:
    return threading.Lock()


def _args(*args: object) -> bytes:
    return payload.dumps_call(args, {})


@pytest.mark.parametrize("fn", [double, double_later], ids=["sync", "async"])
def test_a_call_that_returns_replies_with_its_pickled_result(fn: object) -> None:
    loop = worker.run_init(_bundle(fn))
    try:
        reply = worker.run_call(_bundle(fn), CTX, _args(21), loop)
    finally:
        if loop is not None:
            loop.close()
    assert type(reply) is protocol.ResultReply
    assert reply.invocation_id == "inv-1"
    assert payload.loads(reply.value) == 42


def test_an_async_call_on_a_loop_in_another_thread_replies_the_same() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        reply = asyncio.run_coroutine_threadsafe(worker.run_call_async(_bundle(double_later), CTX, _args(4)), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
    assert reply == protocol.ResultReply(invocation_id="inv-1", value=payload.dumps(8))


def test_a_handler_that_raises_replies_with_the_error() -> None:
    reply = worker.run_call(_bundle(fail), CTX, _args(3), None)
    assert type(reply) is protocol.ErrorReply
    assert (reply.invocation_id, reply.remote_type, reply.remote_message) == ("inv-1", "builtins.ValueError", "no 3")
    assert 'raise ValueError(f"no {x}")' in reply.remote_traceback


def test_arguments_or_a_result_that_do_not_pickle_reply_bad_payload() -> None:
    bad_args = worker.run_call(_bundle(double), CTX, b"not a pickle", None)
    assert type(bad_args) is protocol.BadPayloadReply
    assert "arguments could not be unpickled" in bad_args.message
    bad_result = worker.run_call(_bundle(unpicklable), CTX, _args(1), None)
    assert type(bad_result) is protocol.BadPayloadReply
    assert "result of type lock could not be pickled" in bad_result.message


def test_a_warm_calls_context_built_through_its_slots_equals_the_one_attrs_builds() -> None:
    fields = {
        "invocation_id": "inv-1",
        "function_name": "fn",
        "attempt": 3,
        "cold_start": True,
        "deadline": 123.5,
        "memory_mb": 256,
        "container_id": "c-7",
    }
    built = worker._context(*fields.values())
    assert built == events.Context(**fields)
    assert [f.name for f in events.Context.__attrs_attrs__] == list(fields)  # _context takes them in field order
