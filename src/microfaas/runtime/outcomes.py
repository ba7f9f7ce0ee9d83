"""What an invocation's outcome means to its caller: its value, or the precise ``FaaSError``.

A container ends a call with an ``Outcome`` (``Returned``, ``Raised``, ``BadPayload``,
``Died``), an injected timeout ends it with ``InjectedTimeout`` before it is sent, and
the scheduler core may refuse the request with a ``FailRequest``. ``call_result`` and
``request_error`` turn these into what the caller gets; ``count_failure`` counts such an
error in the function's stats. The platform passes in what it knows (the function's
``timeout`` and ``memory_mb``, the core's queue, the start error); nothing here keeps state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import payload
from ..errors import (
    ColdStartFailed,
    ContainerCrashed,
    FaaSError,
    FunctionError,
    FunctionTimeout,
    OutOfMemory,
    PlatformClosed,
    SerializationError,
    Throttled,
)
from ..nodes.contract import BadPayload, Died, Outcome, Raised, Returned, StartFailed, describe_exit
from .faults import INJECTED

if TYPE_CHECKING:
    from ..actions import FailRequest
    from ..nodes import Container
    from .stats import StatsRecorder

__all__ = ["InjectedTimeout", "call_result", "count_failure", "request_error"]


class InjectedTimeout:
    """The outcome of a call whose timeout was injected with ``faas.inject``: it was never sent."""


def call_result(
    name: str,
    invocation_id: str,
    container: Container | None,
    outcome: Outcome | InjectedTimeout,
    *,
    timeout: float | None,
    memory_mb: int,
) -> Any:
    """The call's value, or the microfaas error its container's outcome means."""
    kind = type(outcome)
    if kind is Returned:
        try:
            return payload.loads(outcome.blob)  # type: ignore[union-attr]
        except Exception as exc:
            raise SerializationError(f"{name}: the result of invocation {invocation_id} could not be unpickled: {exc!r}") from exc
    assert container is not None
    coords = {"function_name": name, "invocation_id": invocation_id, "container_id": container.id, "node_id": container.node_id}
    if kind is Raised:
        assert isinstance(outcome, Raised)
        raise FunctionError(
            f"{name}: invocation {invocation_id} raised {outcome.remote_type}: {outcome.remote_message}",
            remote_type=outcome.remote_type,
            remote_message=outcome.remote_message,
            remote_traceback=outcome.remote_traceback,
            **coords,
        )
    if kind is BadPayload:
        raise SerializationError(f"{name}: invocation {invocation_id}: {outcome.message}")  # type: ignore[union-attr]
    if kind is InjectedTimeout:
        raise FunctionTimeout(
            f"{name}: invocation {invocation_id} ran past timeout={timeout}s in container {container.id}; "
            "the container was killed (a timeout injected with faas.inject)",
            **coords,
        )
    assert isinstance(outcome, Died)
    raise _death_error(name, invocation_id, container, outcome, coords, timeout=timeout, memory_mb=memory_mb)


def _death_error(
    name: str, invocation_id: str, container: Container, death: Died, coords: dict[str, Any], *, timeout: float | None, memory_mb: int
) -> FaaSError:
    where = f"{name}: container {container.id} on node {container.node_id}"
    if death.kill_reason == "oom":
        used = container.memory_at_kill_mb
        used_text = f"{used:.0f} MB" if used is not None else "more"
        return OutOfMemory(
            f"{where} used {used_text}, over memory_mb={memory_mb}, while running invocation {invocation_id}; it was killed", **coords
        )
    if death.kill_reason == "stopped":
        return PlatformClosed(f"{where} was stopped with the platform while running invocation {invocation_id}")
    if death.kill_reason == "timeout" and container.timed_out == invocation_id:
        return FunctionTimeout(
            f"{name}: invocation {invocation_id} ran past timeout={timeout}s in container {container.id}; the container was killed",
            **coords,
        )
    if death.kill_reason == "timeout":
        return ContainerCrashed(f"{where} was killed because another invocation in it ran past its timeout", **coords)
    injected = " (a crash injected with faas.inject or faas.kill)" if death.kill_reason == INJECTED else ""
    return ContainerCrashed(f"{where} {describe_exit(death.returncode)} while running invocation {invocation_id}{injected}", **coords)


def request_error(
    name: str,
    invocation_id: str,
    decision: FailRequest,
    *,
    waiting: int,
    queue_limit: int | None,
    app_name: str,
    start_error: BaseException | None,
) -> FaaSError:
    """The error a request the core refused means: throttled, closed, or its container's start failed (``start_error``)."""
    coords: dict[str, Any] = {"function_name": name, "invocation_id": invocation_id}
    if decision.reason == "throttled":
        return Throttled(
            f"{name}: invocation {invocation_id} was throttled: {waiting} requests are already waiting (queue_limit={queue_limit})",
            **coords,
        )
    if decision.reason == "closed":
        return PlatformClosed(f"app {app_name!r} stopped before invocation {invocation_id} of {name} got a container")
    message = f"{name}: container {decision.container_id} could not start for invocation {invocation_id}"
    if isinstance(start_error, StartFailed):
        error = ColdStartFailed(
            f"{message}: {start_error}",
            remote_type=start_error.remote_type,
            remote_message=start_error.remote_message,
            remote_traceback=start_error.remote_traceback,
            container_id=decision.container_id,
            **coords,
        )
    else:
        error = ColdStartFailed(f"{message}: {start_error!r}", container_id=decision.container_id, **coords)
    error.__cause__ = start_error
    return error


def count_failure(stats: StatsRecorder, exc: FaaSError) -> None:
    """Count a failed invocation in its function's stats, by kind."""
    stats.errors += 1
    if isinstance(exc, FunctionTimeout):
        stats.timeouts += 1
    elif isinstance(exc, OutOfMemory):
        stats.out_of_memory += 1
        stats.crashes += 1
    elif isinstance(exc, ContainerCrashed):
        stats.crashes += 1
    elif isinstance(exc, Throttled):
        stats.throttles += 1
