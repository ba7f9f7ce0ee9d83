"""The one delivery loop (runtime/delivery.py), driven by a fake invoke: attempts, backoff,
max event age, partial failures, bisection and dead letters, with no container and no real sleep."""

from __future__ import annotations

from typing import Any

import pytest

import microfaas as mf
from microfaas import payload
from microfaas.runtime import delivery as delivery_module
from microfaas.runtime.delivery import CallDelivery, Deliverer, Delivery
from microfaas.runtime.eventlog import LifecycleLog
from microfaas.runtime.shipping import dump_args

pytestmark = pytest.mark.anyio


class FakeInvoke:
    """Plays back one outcome per attempt: an exception to raise, or a value to return."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, Any, str, int]] = []

    async def __call__(self, function: str, blob: bytes, invocation_id: str, attempt: int) -> Any:
        args, _ = payload.loads(blob)
        self.calls.append((function, args[0] if args else None, invocation_id, attempt))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every backoff the loop waits, recorded instead of slept."""
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)

    monkeypatch.setattr(delivery_module.anyio, "sleep", fake_sleep)
    return delays


def failure(message: str = "boom") -> mf.FunctionError:
    return mf.FunctionError(message, remote_type="ValueError", remote_message=message, remote_traceback="")


def call(event: Any = "item") -> CallDelivery:
    return CallDelivery("f", "spawn", "inv-1", dump_args("f", (event,), {}))


NO_JITTER = mf.Retries(max_retries=3, initial_delay=1.0, backoff=2.0, jitter=False)


async def test_a_retryable_failure_is_retried_with_backoff_then_handled(slept: list[float]) -> None:
    invoke = FakeInvoke(failure(), failure(), "done")
    deliverer = Deliverer(invoke, LifecycleLog())
    outcome = await deliverer.deliver(call(), NO_JITTER)
    assert (outcome.value, outcome.error, outcome.attempts) == ("done", None, 3)
    assert [c[3] for c in invoke.calls] == [1, 2, 3]
    assert {c[2] for c in invoke.calls} == {"inv-1"}  # every attempt keeps the invocation id
    assert slept == [1.0, 2.0]
    assert deliverer.dead_letters == {}


async def test_an_event_that_fails_every_attempt_is_dead_lettered_once(slept: list[float]) -> None:
    last = failure("last")
    invoke = FakeInvoke(failure(), failure(), failure(), last)
    log = LifecycleLog()
    deliverer = Deliverer(invoke, log)
    outcome = await deliverer.deliver(call("x"), NO_JITTER)
    assert outcome.error is last and outcome.attempts == 4
    [letter] = deliverer.dead_letters["f"]
    assert (letter.event, letter.error, letter.attempts, letter.source, letter.invocation_id) == ((("x",), {}), last, 4, "spawn", "inv-1")
    assert [e.detail["attempt"] for e in log.events("retry")] == [1, 2, 3]
    assert len(log.events("dead_letter")) == 1
    assert slept == [1.0, 2.0, 4.0]


async def test_an_error_that_would_only_fail_again_is_not_retried(slept: list[float]) -> None:
    invoke = FakeInvoke(mf.SerializationError("the result would not pickle"))
    deliverer = Deliverer(invoke, LifecycleLog())
    outcome = await deliverer.deliver(call(), NO_JITTER)
    assert isinstance(outcome.error, mf.SerializationError) and outcome.attempts == 1
    assert len(deliverer.dead_letters["f"]) == 1
    assert slept == []


async def test_an_event_that_would_be_too_old_by_its_next_attempt_goes_to_the_dead_letters(slept: list[float]) -> None:
    invoke = FakeInvoke(failure(), failure())
    deliverer = Deliverer(invoke, LifecycleLog())
    retries = mf.Retries(max_retries=5, initial_delay=10.0, jitter=False, max_event_age=15.0)
    outcome = await deliverer.deliver(call(), retries)
    # The first retry waits 10 s (within 15 s of the first attempt), the second would wait
    # 20 s more: past the event's maximum age, so it is not made.
    assert outcome.attempts == 2 and slept == [10.0]
    assert deliverer.dead_letters["f"][0].attempts == 2


class Halving(Delivery):
    """A batch of ints that fails while it holds an odd one, bisected on error."""

    def __init__(self, items: list[int], settled: list[list[int]]) -> None:
        super().__init__("f", "stream:s/0", f"inv-{items}")
        self.items = items
        self.settled_log = settled

    def payload(self, attempt: int) -> bytes:
        return dump_args(self.function, (self.items,), {})

    def split(self) -> list[Delivery]:
        if len(self.items) < 2:
            return []
        half = len(self.items) // 2
        return [Halving(self.items[:half], self.settled_log), Halving(self.items[half:], self.settled_log)]

    def dead_events(self) -> list[Any]:
        return list(self.items)

    def settled(self) -> None:
        self.settled_log.append(self.items)


async def test_a_split_delivery_delivers_its_halves_in_order_and_dead_letters_only_the_bad_record(slept: list[float]) -> None:
    settled: list[list[int]] = []

    class Invoke(FakeInvoke):
        async def __call__(self, function: str, blob: bytes, invocation_id: str, attempt: int) -> Any:
            (items,), _ = payload.loads(blob)
            self.calls.append((function, items, invocation_id, attempt))
            if any(i % 2 for i in items):
                raise failure(f"odd in {items}")
            return None

    invoke = Invoke()
    deliverer = Deliverer(invoke, LifecycleLog())
    await deliverer.deliver(Halving([0, 2, 3, 4], settled), mf.Retries(max_retries=1, jitter=False))
    # [0,2,3,4] fails -> [0,2] ok, [3,4] fails -> [3] fails, retried once, dead; [4] ok.
    assert [c[1] for c in invoke.calls] == [[0, 2, 3, 4], [0, 2], [3, 4], [3], [3], [4]]
    assert settled == [[0, 2], [3], [4]]
    assert [letter.event for letter in deliverer.dead_letters["f"]] == [3]
    assert slept == [1.0]


class Partial(Delivery):
    """Messages the handler may report partly failed (as a topic's BatchResult)."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__("f", "topic:t", "inv-p")
        self.remaining = ids

    def payload(self, attempt: int) -> bytes:
        return dump_args(self.function, (list(self.remaining),), {})

    def settle(self, value: Any) -> mf.FaaSError | None:
        self.remaining = [i for i in self.remaining if i in value]
        return failure("partial") if self.remaining else None

    def dead_events(self) -> list[Any]:
        return list(self.remaining)


async def test_a_partial_failure_retries_only_what_is_left(slept: list[float]) -> None:
    invoke = FakeInvoke({"b", "c"}, {"c"}, {"c"})
    deliverer = Deliverer(invoke, LifecycleLog())
    outcome = await deliverer.deliver(Partial(["a", "b", "c"]), mf.Retries(max_retries=2, jitter=False))
    assert [c[1] for c in invoke.calls] == [["a", "b", "c"], ["b", "c"], ["c"]]
    assert outcome.error is not None and outcome.attempts == 3
    assert [letter.event for letter in deliverer.dead_letters["f"]] == ["c"]


async def test_jittered_delays_stay_within_the_backoff(slept: list[float]) -> None:
    invoke = FakeInvoke(*[failure()] * 4, "ok")
    deliverer = Deliverer(invoke, LifecycleLog())
    await deliverer.deliver(call(), mf.Retries(max_retries=4, initial_delay=1.0, backoff=2.0, jitter=True))
    assert len(slept) == 4
    assert all(0.0 <= delay <= cap for delay, cap in zip(slept, [1.0, 2.0, 4.0, 8.0], strict=True))
