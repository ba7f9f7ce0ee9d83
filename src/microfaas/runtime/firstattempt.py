"""FirstAttempt: the first attempt of a spawned or mapped call, run with no task of its own.

Why. Most calls end with their first attempt, and a task per call (made, stepped, woken
for the container's answer, through the retry loop's coroutines) cost about as much as
the no-op call itself. So a new call's first attempt is begun from a loop callback, on
the loop's turn after ``spawn`` returned, with ``Invoker.start`` (as ``mf.Executor``'s
submissions are), and the callback that reads the container's answer settles the
``Call`` and records its outcome in the store. Only a call whose first attempt failed
goes on in a task (``Runtime.run_call``'s, through ``Deliverer.deliver_after``), to be
retried or dead-lettered as ``Deliverer.deliver`` would have; a resumed call starts in one.

To its caller the call is the same. ``cancel()`` before the callback has run settles it
unattempted; afterwards it withdraws the attempt (``Invoker.withdraw``), as cancelling the
call's task would. When the platform stops, ``CallTasks.tend`` settles every call still
out here with ``PlatformClosed`` before the store closes (a call cut short so is not
written down: it runs again on the next platform). A bug in the callback fails the
platform, as a bug in a call task does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..errors import CallCancelled, FaaSError, PlatformClosed

if TYPE_CHECKING:
    from ..spec import Retries
    from .call import Call
    from .delivery import CallDelivery
    from .invoker import Attempt, Invoker

__all__ = ["CallRunner", "FirstAttempt"]


class CallRunner(Protocol):
    """What a first attempt asks of the runtime that runs its call (``Runtime``; runtime.py imports
    this module, so it is not imported back)."""

    invoker: Invoker

    def route(self, name: str) -> str:
        """The version serving ``name`` now."""
        ...

    def retry_call(self, call: Call[Any], delivery: CallDelivery, retries: Retries, error: FaaSError) -> None:
        """Go on in a task with ``call``, whose first attempt failed with ``error``."""
        ...

    def call_ended(self, call: Call[Any], delivery: CallDelivery, retries: Retries | None) -> None:
        """``call`` has been settled."""
        ...

    def call_failed_unexpectedly(self, error: BaseException) -> None:
        """A bug while running a call: it fails the platform."""
        ...


class FirstAttempt:
    """A call's first attempt, begun by ``begin`` from a loop callback; it is ``call._task`` until the attempt ends.

    :param runtime: runs the call (``Runtime``): routes and invoker, and what is done once it ends.
    :param retries: the function's (None: one attempt and no dead letter, as for ``map``).
    """

    __slots__ = ("attempt", "call", "delivery", "retries", "runtime")

    def __init__(self, runtime: CallRunner, call: Call[Any], delivery: CallDelivery, retries: Retries | None) -> None:
        self.runtime = runtime
        self.call = call
        self.delivery = delivery
        self.retries = retries
        self.attempt: Attempt | None = None  # once begun, until it ends
        call._task = self

    def begin(self) -> None:
        """Request the attempt (to ``Runtime.route``'s version), unless the call has ended already."""
        call = self.call
        if call._done:  # cancelled before its turn, or cut short by the stop
            return
        runtime = self.runtime
        try:
            target = runtime.route(call.function_name)
            self.attempt = runtime.invoker.start(target, self.delivery.payload(1), call.id, 1, self)
        except FaaSError as exc:
            self._answered(None, exc)
        except BaseException as exc:  # noqa: BLE001 - a bug: it fails the platform
            runtime.call_failed_unexpectedly(exc)

    def _answered(self, value: Any, error: FaaSError | None) -> None:
        """The attempt ended with ``value`` (``error`` None) or ``error``: settle the call, or hand it to a task."""
        call, self.attempt = self.call, None
        if call._done:  # cancelled or cut short meanwhile
            return
        try:
            call.attempts = 1
            retries = self.retries
            if retries is not None and error is None:
                error = self.delivery.settle(value)
                if error is None:
                    self.delivery.settled()
            call._task = None
            if error is not None and retries is not None and not isinstance(error, PlatformClosed):
                self.runtime.retry_call(call, self.delivery, retries, error)  # its task is call._task from its first step
                return
            if error is None:
                call._succeed(value)
            else:
                call._fail(error)
            self.runtime.call_ended(call, self.delivery, retries)
        except BaseException as exc:  # noqa: BLE001 - a bug: it fails the platform
            self.runtime.call_failed_unexpectedly(exc)

    # The attempt's ``on_done`` is the FirstAttempt itself: no bound method is kept per call
    # while it waits (a burst of spawns keeps thousands, and each is one more object for the
    # garbage collector to go over).
    __call__ = _answered

    def cancel(self) -> None:
        """``Call.cancel()``: withdraw the attempt (if begun), and settle the call as cancelled."""
        call = self.call
        self.end(CallCancelled(f"call {call.id} of {call.function_name} was cancelled"), cancelled=True)

    def end(self, error: FaaSError, *, cancelled: bool = False) -> None:
        """Settle the call with ``error`` now, withdrawing its attempt if it is out."""
        call, attempt = self.call, self.attempt
        if call._done:
            return
        self.attempt = None
        if attempt is not None:
            self.runtime.invoker.withdraw(attempt)
            call.attempts = 1
        call._task = None
        call._fail(error, cancelled=cancelled)
        self.runtime.call_ended(call, self.delivery, self.retries)
