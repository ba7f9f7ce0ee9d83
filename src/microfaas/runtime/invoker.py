"""Invoker: one attempt of an invocation, from its request to the caller's value or error.

How this works. The arguments arrive pickled (a ``SerializationError`` costs no
container). The attempt asks the core for a container and waits as an ``Attempt``
until a fact -- at once, or later: a start, a finished call -- produces its
decision. A ``RunOn`` sends the call to its container right there, in the callback
that made the decision; the caller wakes once, for the container's ``Outcome``,
which ``outcomes.py`` turns into the value or the precise ``FaaSError``. The
call's timeout runs on its container's loop timer (``deadlines.py``) from the
moment the call gets its slot, whether or not the caller still waits; a caller
that stops waiting withdraws its request, or leaves its running call to finish.

``invoke`` is awaited by the caller's task. ``start`` is the same attempt with no
task (for ``mf.Executor``, whose caller is another thread): its future runs a hook
when it is done, right in the callback that read the container's answer, so the
attempt costs no turn of the loop beyond the container's reply.

The hot path uses asyncio futures directly (one per attempt), for speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import lifecycle as ev
from ..actions import FailRequest, RunOn
from ..errors import FaaSError, PlatformClosed
from ..nodes import Died, NotStarted, Outcome, Raised, Returned
from ..protocol import CallRequest
from .faults import INJECTED
from .outcomes import InjectedTimeout, call_result, count_failure, request_error

if TYPE_CHECKING:
    from ..nodes import Container
    from .cluster import Cluster
    from .deadlines import Deadlines
    from .eventlog import LifecycleLog
    from .faults import FaultPlan
    from .stats import StatsRecorder

__all__ = ["Attempt", "Invoker"]


class Attempt:
    """One attempt of an invocation, from its request to its outcome.

    The core's decision about it is carried out where it is made: a ``RunOn`` sends the
    call to its container at once, from whichever callback produced it, and the caller's
    one ``future`` then gets the container's ``Outcome``; a ``FailRequest`` goes to the
    future as it is.
    """

    __slots__ = (
        "attempt",
        "blob",
        "cold_start",
        "container",
        "deadlines",
        "function",
        "future",
        "hook",
        "invocation_id",
        "on_done",
        "started_at",
    )

    def __init__(
        self,
        function: str,
        invocation_id: str,
        attempt: int,
        blob: bytes,
        started_at: float,
        hook: Callable[[Attempt], object] | None,
    ) -> None:
        self.function = function
        self.invocation_id = invocation_id
        self.attempt = attempt
        self.blob = blob
        self.future: asyncio.Future[Outcome | FailRequest | InjectedTimeout]
        self.hook = hook  # ``Invoker.start``'s: runs when ``future`` is done (None: a task awaits it)
        self.on_done: Callable[[Any, FaaSError | None], object] | None = None  # what ``hook`` tells the outcome
        self.cold_start = False
        self.container: Container | None = None
        self.deadlines: Deadlines | None = None  # its container's, once its timeout runs
        self.started_at = started_at  # the platform's clock when it was first requested


class _EagerFuture(asyncio.Future[Any]):
    """The future of an attempt begun with ``Invoker.start``: runs its hook when it is done.

    A container's answer (``Returned``, ``Raised``) runs the hook right there, in the
    callback that read the answer, so the caller's ``concurrent.futures.Future`` is
    completed without another turn of the loop. Whatever else sets it (the core's
    refusal, a container's death, the stop) is set from inside a request or a stop,
    so the hook runs on the loop's next turn, as a done callback would.
    """

    __slots__ = ("_call", "_hook")

    def __init__(self, call: Attempt, hook: Callable[[Attempt], object], *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._call: Attempt | None = call
        self._hook = hook

    def set_result(self, result: Any) -> None:
        super().set_result(result)
        call, self._call = self._call, None  # the attempt refers to this future: no cycle left for the collector
        assert call is not None
        if type(result) is Returned or type(result) is Raised:
            self._hook(call)
        else:
            self.get_loop().call_soon(self._hook, call)


class Invoker:
    """Runs attempts on the cluster's containers, and counts them in each function's stats.

    :param app_name: for error messages.
    """

    def __init__(
        self, app_name: str, cluster: Cluster, *, stats: dict[str, StatsRecorder], lifecycle: LifecycleLog, faults: FaultPlan
    ) -> None:
        self.app_name = app_name
        self.cluster = cluster
        self.specs = cluster.specs
        self.sched = cluster.sched
        self.stats = stats
        self.lifecycle = lifecycle
        self.faults = faults
        self.clock = cluster.clock
        self.open = False
        self._waiters: dict[str, Attempt] = {}  # requests waiting for the core's decision
        self._queued: dict[str, Attempt] = {}  # sent to a full container, waiting in it for a slot
        cluster.decide = self._decided
        cluster.call_started = self._queued_call_started
        cluster.deadline_passed = self._deadline_passed
        cluster.container_gone = self._container_gone
        self._answered_hook = self._answered  # the hook of every attempt begun with ``start`` (one bound method)

    async def invoke(self, name: str, blob: bytes, invocation_id: str, attempt: int) -> Any:
        """Run one attempt of ``name`` with the pickled ``(args, kwargs)`` ``blob``; its value.

        :raises FaaSError: the attempt failed (the precise error; see ``outcomes.py``).
        """
        call = self._begin(name, blob, invocation_id, attempt)
        while True:
            try:
                await call.future
            except BaseException:
                self._abandon(call)
                raise
            if self._settled(call):
                return self._finish(call)

    def start(
        self, name: str, blob: bytes, invocation_id: str, attempt: int, on_done: Callable[[Any, FaaSError | None], object]
    ) -> Attempt:
        """Start one attempt as ``invoke`` does, with no task: ``on_done(value, None)`` or
        ``on_done(None, error)`` runs on the loop when it ends, unless it is withdrawn first.

        The request and the core's decision happen now, and a call that gets a free
        container is sent now. When the container answers, ``on_done`` runs right in the
        callback that read the answer (``_EagerFuture``).

        :raises FaaSError: it could not be requested (the platform was stopped).
        """
        return self._begin(name, blob, invocation_id, attempt, self._answered_hook, on_done)

    def withdraw(self, call: Attempt) -> None:
        """Give up an attempt begun with ``start``, as a cancelled ``invoke`` does: its request is
        withdrawn, or its container finishes it for nobody. Its ``on_done`` does not run, unless
        the attempt had ended already and ``on_done`` was due on the loop's next turn."""
        call.future.cancel()
        self._abandon(call)

    def _answered(self, call: Attempt) -> None:
        """The future of an attempt begun with ``start`` is done: it has ended, or it is asked for again."""
        on_done = call.on_done
        assert on_done is not None
        try:
            if not self._settled(call):
                return
            value = self._finish(call)
        except FaaSError as exc:
            on_done(None, exc)
            return
        on_done(value, None)

    def _begin(
        self,
        name: str,
        blob: bytes,
        invocation_id: str,
        attempt: int,
        hook: Callable[[Attempt], object] | None = None,
        on_done: Callable[[Any, FaaSError | None], object] | None = None,
    ) -> Attempt:
        """Count the attempt and request a container for it."""
        self.stats[name].invocations += 1
        now = self.clock()
        call = Attempt(name, invocation_id, attempt, blob, now, hook)
        call.on_done = on_done
        loop = self.cluster.loop
        call.future = loop.create_future() if hook is None else _EagerFuture(call, hook, loop=loop)
        self._request(call, now)
        return call

    def _request(self, call: Attempt, now: float) -> None:
        if not self.open:
            error = PlatformClosed(f"app {self.app_name!r} was stopped; open a new platform with `async with app.run()`")
            self._failed(call, error)
            raise error
        self._waiters[call.invocation_id] = call
        self.cluster.apply(self.sched.request(call.invocation_id, call.function, now=now))

    def _settled(self, call: Attempt) -> bool:
        """``call.future`` is done: True when that ends the attempt; False when it was asked again.

        :raises FaaSError: asking again failed.
        """
        if type(call.future.result()) is not NotStarted:
            return True
        # Its container died with the call still queued in it: ask again.
        self._queued.pop(call.invocation_id, None)
        loop = self.cluster.loop
        call.future = loop.create_future() if call.hook is None else _EagerFuture(call, call.hook, loop=loop)
        call.container = None
        self._request(call, self.clock())
        return False

    def _finish(self, call: Attempt) -> Any:
        """The value of an attempt that has ended, counted in its function's stats.

        :raises FaaSError: the attempt failed.
        """
        try:
            value = self._result(call, call.future.result())
        except FaaSError as exc:
            self._failed(call, exc)
            raise
        stats = self.stats[call.function]
        stats.completed += 1
        stats.latencies.append(self.clock() - call.started_at)
        return value

    def _failed(self, call: Attempt, exc: FaaSError) -> None:
        count_failure(self.stats[call.function], exc)
        self.lifecycle.call_failed(exc, attempt=call.attempt, injected=self.faults.was_injected(call.invocation_id, exc))

    def _decided(self, decision: RunOn | FailRequest) -> None:
        """The core decided about a request: send it to its container, or fail it."""
        call = self._waiters.pop(decision.request_id, None)
        if call is None or call.future.done():  # its caller is gone: give the slot back
            if type(decision) is RunOn:
                self.cluster.call_finished(decision.container_id)
            return
        if type(decision) is FailRequest:
            call.future.set_result(decision)
            return
        assert type(decision) is RunOn
        container = call.container = self.cluster.containers[decision.container_id]
        call.cold_start = decision.cold_start
        if self.faults and self._inject_fault(call, container, queued=decision.queued):
            return
        request = CallRequest(
            invocation_id=call.invocation_id,
            attempt=call.attempt,
            timeout_s=self.specs[call.function].timeout,
            cold_start=decision.cold_start,
            args=call.blob,
        )
        started = container.start_call(call.future, request, queued=decision.queued)
        if started:
            self._started(call)
        else:
            self._queued[call.invocation_id] = call

    def _inject_fault(self, call: Attempt, container: Container, *, queued: bool) -> bool:
        """Carry out a fault armed with ``faas.inject`` for ``call``, if any; True when the call is not to be sent."""
        fault = self.faults.take_call_fault(call.function, call.invocation_id)
        if fault == "timeout" or (fault == "crash" and queued):
            # The call is never sent: as if it had run past its timeout, or as if the
            # container had died under it (not merely before it started).
            container.kill("timeout" if fault == "timeout" else INJECTED)
            call.future.set_result(InjectedTimeout() if fault == "timeout" else Died(None, INJECTED))
            self._started(call)  # counted and recorded as started; no timeout clock
            return True
        if fault == "crash":  # the call is sent to a container that has just been killed
            container.kill(INJECTED)
        return False

    def _queued_call_started(self, invocation_id: str) -> None:
        call = self._queued.pop(invocation_id, None)
        if call is not None:
            self._started(call)

    def _started(self, call: Attempt) -> None:
        """``call`` got its slot in its container: count it, and start the clock on its timeout."""
        name, invocation_id, container = call.function, call.invocation_id, call.container
        assert container is not None
        stats = self.stats[name]
        if call.cold_start:
            stats.cold_starts += 1
        else:
            stats.warm_starts += 1
        self.lifecycle.call_started(name, container, cold=call.cold_start, invocation_id=invocation_id, attempt=call.attempt)
        timeout = self.specs[name].timeout
        if timeout is not None and not call.future.done():
            # The deadline is on a loop timer, not a cancel scope: it holds whether or not the
            # caller is still waiting.
            call.deadlines = self.cluster.deadlines[container.id]
            call.deadlines.add(invocation_id, timeout)

    def _abandon(self, call: Attempt) -> None:
        """The caller of ``call`` stopped waiting: withdraw its request, or leave the call running."""
        if call.container is not None:
            # The container keeps running it, under the same deadline.
            call.container.abandoned.add(call.invocation_id)
        elif self._waiters.pop(call.invocation_id, None) is not None:
            self.cluster.apply(self.sched.cancel(call.invocation_id, now=self.clock()))

    def _result(self, call: Attempt, outcome: Outcome | FailRequest | InjectedTimeout) -> Any:
        """The call's value, or the microfaas error its outcome means."""
        if call.deadlines is not None:
            call.deadlines.discard(call.invocation_id)
        if isinstance(outcome, FailRequest):
            raise request_error(
                call.function,
                call.invocation_id,
                outcome,
                waiting=self.sched.waiting(),
                queue_limit=self.sched.queue_limit,
                app_name=self.app_name,
                start_error=self.cluster.start_errors.pop(outcome.container_id or "", None),
            )
        spec = self.specs[call.function]
        return call_result(call.function, call.invocation_id, call.container, outcome, timeout=spec.timeout, memory_mb=spec.memory_mb)

    def _deadline_passed(self, container: Container, invocation_id: str) -> None:
        """An invocation ran past its timeout: kill its container (its caller gets FunctionTimeout)."""
        if invocation_id not in container._pending:
            return
        container.timed_out = invocation_id
        container.kill("timeout")
        if invocation_id in container.abandoned:
            self.cluster.emit(ev.TIMEOUT, container.id, invocation_id=invocation_id, abandoned=True, injected=False)

    def _container_gone(self, container: Container) -> None:
        for invocation_id in [i for i, call in self._queued.items() if call.container is container]:
            del self._queued[invocation_id]  # abandoned: nobody asks again
