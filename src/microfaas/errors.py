"""The exceptions a microfaas user sees, and nothing else.

::

    FaaSError
    ├── InvocationError            an invocation failed; carries its coordinates
    │   ├── FunctionError          the handler raised (remote type, message, traceback)
    │   ├── FunctionTimeout        ran past its timeout; the container was killed
    │   ├── OutOfMemory            went over memory_mb; the container was killed
    │   ├── ContainerCrashed       the worker process died under the invocation
    │   ├── ColdStartFailed        the container could not start (init raised, load failed)
    │   └── Throttled              no capacity and the wait queue is full
    ├── CallCancelled              a spawned call was cancelled before it finished
    ├── SerializationError         an argument or result could not be pickled
    ├── UnknownFunction            no function by that name in the app
    ├── UnknownSource              no topic, stream or timer by that name in the app
    ├── UnknownCall                no spawned call or batch job by that id (or its result expired)
    ├── PlatformClosed             the platform is not running
    ├── ConnectorUnreachable       a connector's outside system (a broker) could not be reached
    └── StoreError                 the durable store cannot be used, or a write to it failed
        ├── StoreCorrupt           the file is not a microfaas store, or a row of it is damaged
        ├── StoreVersionError      the store was written by a newer microfaas (a later schema)
        ├── StoreReadOnly          the store's file (or its folder) cannot be written
        ├── StoreFull              the disk (or the store's size limit) is full
        └── StoreLocked            another platform has the store open

Foreign exceptions (``EOFError``, ``BrokenPipeError``, anyio's stream errors) are
translated into these at one boundary in ``pool.py`` and chained with ``from``.
Cancellation is never wrapped.
"""

from __future__ import annotations

__all__ = [
    "CallCancelled",
    "ColdStartFailed",
    "ConnectorUnreachable",
    "ContainerCrashed",
    "FaaSError",
    "FunctionError",
    "FunctionTimeout",
    "InvocationError",
    "OutOfMemory",
    "PlatformClosed",
    "SerializationError",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreLocked",
    "StoreReadOnly",
    "StoreVersionError",
    "Throttled",
    "UnknownCall",
    "UnknownFunction",
    "UnknownSource",
]


class FaaSError(Exception):
    """Base of every error microfaas raises."""


class InvocationError(FaaSError):
    """An invocation failed.

    :param message: what happened, naming the function and container.
    :param function_name: the function invoked.
    :param invocation_id: the invocation's id, when one was assigned.
    :param container_id: the container it ran in, when it reached one.
    :param node_id: that container's node, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        function_name: str | None = None,
        invocation_id: str | None = None,
        container_id: str | None = None,
        node_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.function_name = function_name
        self.invocation_id = invocation_id
        self.container_id = container_id
        self.node_id = node_id

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[InvocationError], args: tuple[object, ...], state: dict[str, object]) -> InvocationError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class FunctionError(InvocationError):
    """The handler raised an exception inside its container.

    ``remote_type`` is the qualified name of the exception type (``"builtins.ValueError"``),
    ``remote_message`` its ``str()``, ``remote_traceback`` the formatted traceback from
    the container.
    """

    def __init__(
        self,
        message: str,
        *,
        remote_type: str,
        remote_message: str,
        remote_traceback: str,
        **coords: str | None,
    ) -> None:
        super().__init__(message, **coords)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback


class FunctionTimeout(InvocationError):
    """The invocation ran past its function's ``timeout``; its container was killed."""


class OutOfMemory(InvocationError):
    """The container's private memory (USS) went over ``memory_mb``; it was killed."""


class ContainerCrashed(InvocationError):
    """The container's process died while running the invocation (exit or signal)."""


class ColdStartFailed(InvocationError):
    """The container for this invocation could not start.

    When the cause was the function's ``init`` (or loading its code) raising,
    ``remote_type``, ``remote_message`` and ``remote_traceback`` describe it; otherwise
    they are ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        remote_type: str | None = None,
        remote_message: str | None = None,
        remote_traceback: str | None = None,
        **coords: str | None,
    ) -> None:
        super().__init__(message, **coords)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback


class Throttled(InvocationError):
    """No container could take the invocation and the wait queue was full.

    ``retry_after`` suggests when to try again, in seconds.
    """

    def __init__(self, message: str, *, retry_after: float = 1.0, **coords: str | None) -> None:
        super().__init__(message, **coords)
        self.retry_after = retry_after


class CallCancelled(FaaSError):
    """``call.cancel()`` was called before the spawned invocation finished."""


class SerializationError(FaaSError):
    """An argument or a result could not be pickled or unpickled."""


class UnknownFunction(FaaSError, LookupError):
    """The app has no function by that name."""


class UnknownSource(FaaSError, LookupError):
    """The app has no event source of that kind and name (``faas.topic("orders")`` for an
    undeclared topic): a topic, stream or timer is not a function."""


class UnknownCall(FaaSError, LookupError):
    """``faas.call(id)`` or ``faas.batch_job(id)`` found nothing by that id: it was never made on this
    store, or it finished longer than the store's ``result_ttl`` ago."""


class PlatformClosed(FaaSError):
    """The platform is not running: open one with ``async with app.run()``."""


class ConnectorUnreachable(FaaSError, ConnectionError):
    """A connector (``mf.RedisStream``, ...) could not reach its outside system when the
    platform started; the message names the connector and the address. Raised by
    ``async with app.run()`` unless the connector was told to wait for its server."""


class StoreError(FaaSError):
    """The durable store (``app.run(store=...)``) cannot be used, or a write to it failed.

    Raised by ``async with app.run(store=...)`` when the store cannot be opened, and
    by the call that accepted an event (``spawn``, ``publish``, ``put``, ``batch``)
    when that event could not be stored: it was then not accepted.
    """


class StoreCorrupt(StoreError):
    """The file is not a microfaas store, or one of its rows cannot be read.

    A damaged row does not stop a platform: its event goes to the dead letters with
    this error, and the rest loads.
    """


class StoreVersionError(StoreError):
    """The store was written by a newer microfaas (its schema version is later than this one knows)."""


class StoreReadOnly(StoreError):
    """The store's file, or the folder that holds it, cannot be written."""


class StoreFull(StoreError):
    """The disk holding the store (or the store's own size limit) is full."""


class StoreLocked(StoreError):
    """Another platform has this store open; two at once would deliver every event twice."""


# Each error calls itself ``microfaas.<Name>`` from the start (in tracebacks, reprs and pickles
# by reference), as the package's other names do once they are first used (``microfaas._adopt``):
# an error is often raised before anyone has looked it up as ``mf.<Name>``.
for _name in __all__:
    globals()[_name].__module__ = "microfaas"
del _name
