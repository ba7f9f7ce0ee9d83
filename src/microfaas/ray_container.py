"""The container of ``RayNodes``: a Ray actor, and the platform's handle on it (extra ``ray``).

A container is a ``_ContainerActor`` placed on its node (``ray.RayNode``) with a hard
node-affinity scheduling strategy and ``max_concurrency`` equal to the function's
concurrency. It is created empty, its process set up as the platform's is (a node
keeps one such spare started ahead), and its ``start`` call loads the cloudpickled
``Bundle`` exactly as ``worker.serve`` does (``worker.start_function``).

An invocation is one ``invoke`` actor call (``worker.run_call``), awaited from the
platform's event loop. The call takes one bytes argument (the invocation's fields
and its arguments, pickled together) and returns the result's bytes, or the
error's reply record, because Ray pays for every argument and every non-bytes value it
serialises: five arguments and a tuple reply cost about 0.3 ms per call more. A
second, never-returning ``watch`` call in its own concurrency group notices the
actor's death even when it is idle.

Every Ray error is turned into a microfaas fact here: an actor that dies, or any
Ray exception while a call is awaited, is the container's death (``Died``), which
the platform reports as ``ContainerCrashed`` (or ``FunctionTimeout`` /
``OutOfMemory`` when the platform killed it). Timeouts, memory limits and stops
kill the actor with ``ray.kill(actor, no_restart=True)``.

This module imports the NodeService parts and the ContainerService below it, never
``ray.py`` (the nodes and the provider above it).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import os
import pickle
import sys
import threading
import time
from typing import Any, Final

import anyio
import ray

from . import events
from .nodes.container import EXIT_STATUS_WAIT, ContainerHandle
from .nodes.contract import Died, Outcome, Returned, StartFailed, outcome_of
from .nodes.memory import private_mb
from .protocol import CallReply, CallRequest, Ready, ResultReply, StartFailure
from .worker import Bundle, Started, flush_user_output, run_call, run_call_async, start_function

__all__ = ["RayContainer", "actor_class", "first_line", "kill_actor"]

_CONTROL_GROUP: Final = "microfaas-control"


# -- the actor: inside a Ray worker process ---------------------------------------------------


class _ContainerActor:
    """One container inside a Ray worker process (see the module docstring).

    It is created empty, its process set up as the platform's is, and becomes a container
    with one ``start`` call; a spare imports the app's modules while it waits for that call.
    """

    def __init__(self, sys_path: list[str], cwd: str, preload: tuple[str, ...]) -> None:
        self._container_id = ""
        self._forever = threading.Event()
        self._bundle: Bundle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._baseline_mb = 0.0  # private memory once the bundle was loaded
        # The platform's import path first (its modules import here by name), then the worker's own.
        sys.path[:0] = [p for p in sys_path if p not in sys.path]
        try:
            os.chdir(cwd)
        except OSError:
            pass
        for module in preload:
            try:
                importlib.import_module(module)
            except BaseException:  # noqa: BLE001 - the container's own load reports it
                pass

    def start(self, container_id: str, bundle_blob: bytes) -> tuple[Ready, float] | StartFailure:
        """Load the function and run its init.

        :returns: ``(Ready, baseline_mb)`` or the ``StartFailure``.
        """
        self._container_id = container_id
        result = start_function(bundle_blob, after_load=self._measure_baseline)
        if not isinstance(result, Started):
            return result
        flush_user_output()
        self._bundle, self._loop = result.bundle, result.loop
        if result.loop is not None:
            # Async handlers (and what their init set up) share one loop, run in a helper thread.
            threading.Thread(target=result.loop.run_forever, name="microfaas-loop", daemon=True).start()
        return Ready(pid=os.getpid(), load_s=result.load_s, init_s=result.init_s), self._baseline_mb

    def _measure_baseline(self) -> None:
        # What the Ray worker and the function's code take is not the container's to pay for (a
        # forked local container shares them with its zygote); init's allocations and the calls' are.
        self._baseline_mb = private_mb("self") or 0.0

    @ray.method(concurrency_group=_CONTROL_GROUP)
    def watch(self) -> None:
        """Never returns: its error is how the platform learns that the actor died."""
        self._forever.wait()

    def invoke(self, request: bytes) -> bytes | bytearray | CallReply:
        """Run one invocation (an ``_invoke_request``).

        :returns: the result's blob, or the ``ErrorReply`` or ``BadPayloadReply``.
        """
        invocation_id, attempt, deadline, cold_start, args_blob = pickle.loads(request)
        bundle = self._bundle
        assert bundle is not None, "invoke on a container that did not start"
        ctx = events.Context(
            invocation_id=invocation_id,
            function_name=bundle.name,
            attempt=attempt,
            cold_start=cold_start,
            deadline=deadline,
            memory_mb=bundle.memory_mb,
            container_id=self._container_id,
        )
        try:
            if self._loop is not None:
                reply = asyncio.run_coroutine_threadsafe(run_call_async(bundle, ctx, args_blob), self._loop).result()
            else:
                reply = run_call(bundle, ctx, args_blob, None)
        finally:
            flush_user_output()
        return reply.value if type(reply) is ResultReply else reply


class RayContainer(ContainerHandle):
    """The platform's handle on one container actor (``nodes.Container``)."""

    def __init__(self, container_id: str, node_id: str, actor: Any, *, local: bool) -> None:
        super().__init__(container_id, node_id, None)
        self.actor = actor
        # Why Ray says the actor died (its error's first line), when it died of itself.
        self.death_detail: str | None = None
        self._local = local
        self._baseline_mb = 0.0
        self._pending: dict[str, asyncio.Future[Outcome]] = {}
        self._replies: dict[str, asyncio.Future[Any]] = {}  # Ray's futures for the calls in flight
        self._lost = anyio.Event()  # the actor is dead, or was killed
        self._watch_ref: Any = None

    # -- start ------------------------------------------------------------------------------

    async def handshake(self, bundle_blob: bytes) -> None:
        """Make the actor this container: load the function and run its init.

        :raises StartFailed: the actor died first, or loading or init raised.
        """
        try:
            reply = await self.actor.start.remote(self.id, bundle_blob)
        except Exception as exc:  # noqa: BLE001 - any Ray error: the actor did not come up
            raise StartFailed(f"the container actor died before it was ready: {first_line(exc)}", stage="process") from None
        if isinstance(reply, StartFailure):
            raise StartFailed.from_reply(reply)
        ready, self._baseline_mb = reply
        self.pid, self.load_s, self.init_s = ready.pid, ready.load_s, ready.init_s
        if self._local and not _is_ray_worker(self.pid):
            self._local = False  # the pid is not a Ray worker of this machine: memory is not measured
        self._watch_ref = self.actor.watch.remote()

    # -- calls ------------------------------------------------------------------------------

    def start_call(self, outcome: asyncio.Future[Any], request: CallRequest, *, queued: bool = False) -> bool:
        """Send one invocation as an actor call; ``outcome`` gets its ``Outcome`` (see ``nodes.Container``).

        RayNodes does not pipeline (the actor queues calls beyond its ``max_concurrency`` itself),
        so a call starts when it is sent.
        """
        if self._lost.is_set():
            outcome.set_result(self._death())
            return True
        invocation_id = request.invocation_id
        self._pending[invocation_id] = outcome
        deadline = time.time() + request.timeout_s if request.timeout_s is not None else None
        try:
            ref = self.actor.invoke.remote(_invoke_request(invocation_id, request.attempt, deadline, request.cold_start, request.args))
            reply = asyncio.wrap_future(ref.future())
        except Exception as exc:  # noqa: BLE001 - a Ray error is a lost container, never the user's problem
            self._actor_lost(exc)
        else:
            # A callback, not a task per call: Ray's future completes on this loop, and the caller wakes once.
            self._replies[invocation_id] = reply
            reply.add_done_callback(functools.partial(self._reply_arrived, invocation_id, outcome))
        return True

    def _reply_arrived(self, invocation_id: str, outcome: asyncio.Future[Any], reply: asyncio.Future[Any]) -> None:
        self._replies.pop(invocation_id, None)
        if reply.cancelled():
            return  # the container is gone: its pending calls were resolved as a death
        exc = reply.exception()
        if exc is not None:  # ActorDiedError and friends: the container is gone
            self._actor_lost(exc)
            return
        if self._pending.get(invocation_id) is not outcome:
            return  # resolved as a death meanwhile
        del self._pending[invocation_id]
        result = reply.result()
        value: Outcome = Returned(result) if isinstance(result, bytes | bytearray) else outcome_of(result)
        if not outcome.done():  # done: the caller gave up waiting
            outcome.set_result(value)
        if self.on_reply is not None:
            self.on_reply(self)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # -- control ----------------------------------------------------------------------------

    def kill(self, reason: str) -> None:
        """Kill the actor now; pending calls end as ``Died(kill_reason=reason)``."""
        if self.kill_reason is None:
            self.kill_reason = reason
        self._kill_actor()

    def terminate(self) -> None:
        """Stop the container: an actor has no graceful stop worth waiting for, so it is killed."""
        self.kill("stopped")

    def memory_used_mb(self) -> float | None:
        """Private memory grown since the actor started (the Ray worker's own is not counted).

        Measured from /proc when the actor runs on this machine; None otherwise.
        """
        if not self._local or self.pid is None or self.exited.is_set():
            return None
        used = private_mb(self.pid)
        return None if used is None else max(0.0, used - self._baseline_mb)

    def set_exit(self, returncode: int | None) -> None:
        if not self.exited.is_set():
            self.returncode = returncode
            self.exited.set()

    def _kill_actor(self) -> None:
        if not self._lost.is_set():
            self._lost.set()
            kill_actor(self.actor)

    def _actor_lost(self, exc: BaseException) -> None:
        if self.death_detail is None and self.kill_reason is None:
            self.death_detail = first_line(exc)
        self._kill_actor()

    async def serve_replies(self) -> None:
        """Run until the actor is gone; then fail what is pending and report the exit."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch, tg.cancel_scope)
                tg.start_soon(self._wait_lost, tg.cancel_scope)
        finally:
            if not self._lost.is_set():
                self.kill("stopped")
            self.set_exit(None)
            death = self._death()
            for outcome in self._pending.values():
                if not outcome.done():
                    outcome.set_result(death)
            self._pending.clear()
            for reply in list(self._replies.values()):
                reply.cancel()
            if self.on_exit is not None:
                self.on_exit(self)

    async def _watch(self, scope: anyio.CancelScope) -> None:
        try:
            if self._watch_ref is not None:
                await self._watch_ref
        except Exception as exc:  # noqa: BLE001 - the actor died: that is what we wait for
            self._actor_lost(exc)
        scope.cancel()

    async def _wait_lost(self, scope: anyio.CancelScope) -> None:
        # Killed by us: Ray confirms the death through the watch call; don't wait for it forever.
        await self._lost.wait()
        await anyio.sleep(EXIT_STATUS_WAIT)
        scope.cancel()

    def _death(self) -> Died:
        return Died(self.returncode, self.kill_reason)


def _invoke_request(invocation_id: str, attempt: int, deadline: float | None, cold_start: bool, args_blob: bytes | bytearray) -> bytes:
    """An invocation as the one bytes argument of ``_ContainerActor.invoke``."""
    return pickle.dumps((invocation_id, attempt, deadline, cold_start, args_blob), protocol=pickle.HIGHEST_PROTOCOL)


def first_line(exc: BaseException) -> str:
    """A Ray error in one line, for a message: its type and the first line of its text."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _is_ray_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().startswith(b"ray::")
    except OSError:
        return False


def kill_actor(actor: Any) -> None:
    """Kill a container actor for good (no restart); one that is gone already is fine."""
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone, or the cluster is: either way it is dead to us
        pass


_ACTOR_CLASS: list[Any] = []


def actor_class() -> Any:
    """The actor class; its concurrency group is declared once, here."""
    if not _ACTOR_CLASS:
        # Ray's overloads of ray.remote leave out concurrency_groups, which it documents and takes.
        cls = ray.remote(concurrency_groups={_CONTROL_GROUP: 1})(_ContainerActor)  # type: ignore[call-overload]
        _ACTOR_CLASS.append(cls)
    return _ACTOR_CLASS[0]
