"""What travels between an ``mf.Executor`` and its workers, and the trampoline that runs in them.

The executor's one function is ``trampoline``: it gets the cloudpickled callable
and the pickled arguments of one call (or a chunk of argument tuples), runs it,
times it, and returns ``(value, run_s)``. What the callable raised comes back as
a ``TaskFailure``: the exception pickled (when it pickles) and described, so the
caller can raise it as its own type. The caller's side pickles here too
(``dumps_callable``, ``dumps_args``, ``dumps_chunk``), raising ``SerializationError``.

This module imports only ``payload``, ``events`` and ``errors`` from microfaas: it
is what a worker imports to run a task.
"""

from __future__ import annotations

import pickle
import time
import traceback
import types
import weakref
from collections.abc import Callable
from typing import Any, Final

import attrs
import cloudpickle

from . import payload
from .errors import FunctionError, SerializationError
from .events import context

__all__ = ["TASK", "TaskFailure", "dumps_args", "dumps_callable", "dumps_chunk", "initialize", "name_of", "trampoline"]

TASK: Final = "task"  # the trampoline's name in an executor's app
# Callables a container has unpickled, by their pickle: a map's calls, or repeated submits
# of one function, unpickle it once (and it keeps its state between calls, as in a process pool).
_LOADED_KEPT: Final = 32


@attrs.frozen
class TaskFailure:
    """What a submitted callable raised, as it travels back: pickled (when it pickles) and described."""

    error: bytes | None
    remote_type: str
    remote_message: str
    remote_traceback: str
    callable_name: str
    invocation_id: str | None
    container_id: str | None

    @classmethod
    def of(cls, exc: BaseException, fn: object) -> TaskFailure:
        kind = type(exc)
        tb = exc.__traceback__
        # The trampoline's own frame is not the user's business.
        lines = traceback.format_exception(kind, exc, tb.tb_next if tb is not None and tb.tb_next is not None else tb)
        try:
            blob: bytes | None = cloudpickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - sent as a FunctionError instead
            blob = None
        ctx = context()
        return cls(
            error=blob,
            remote_type=f"{kind.__module__}.{kind.__qualname__}",
            remote_message=str(exc),
            remote_traceback="".join(lines),
            callable_name=name_of(fn),
            invocation_id=ctx.invocation_id,
            container_id=ctx.container_id,
        )

    def exception(self) -> BaseException:
        """The callable's own exception (its remote traceback as ``__cause__``), or a ``FunctionError``."""
        remote = FunctionError(
            f"{self.callable_name} raised {self.remote_type}: {self.remote_message} in container {self.container_id}\n\n"
            f'Remote traceback:\n"""\n{self.remote_traceback}"""',
            remote_type=self.remote_type,
            remote_message=self.remote_message,
            remote_traceback=self.remote_traceback,
            function_name=TASK,
            invocation_id=self.invocation_id,
            container_id=self.container_id,
        )
        if self.error is not None:
            try:
                exc = pickle.loads(self.error)
            except Exception:  # noqa: BLE001 - it pickled there but does not unpickle here
                return remote
            if isinstance(exc, BaseException):
                exc.__cause__ = remote
                return exc
        return remote


_loaded: dict[bytes, Any] = {}


def trampoline(fn_blob: bytes, call_blob: bytes, chunked: bool) -> tuple[Any, float]:
    """Run one submitted call (or a chunk of calls to one callable), and time it.

    Never raises what the callable raised: that comes back as a ``TaskFailure``.
    """
    started = time.perf_counter()
    return _run(fn_blob, call_blob, chunked), time.perf_counter() - started


def _run(fn_blob: bytes, call_blob: bytes, chunked: bool) -> Any:
    fn: Any = None
    try:
        fn = _loaded.get(fn_blob)
        if fn is None:
            fn = pickle.loads(fn_blob)
            if len(_loaded) >= _LOADED_KEPT:
                _loaded.clear()
            _loaded[fn_blob] = fn
        if not chunked:
            args, kwargs = pickle.loads(call_blob)
            return fn(*args, **kwargs)
        chunk = pickle.loads(call_blob)
    except BaseException as exc:  # noqa: BLE001 - it goes back to the caller's future
        return TaskFailure.of(exc, fn)
    out = []
    for args in chunk:
        try:
            out.append(fn(*args))
        except BaseException as exc:  # noqa: BLE001
            out.append(TaskFailure.of(exc, fn))
            break  # map stops at the first failure; the rest of the chunk is not run
    return out


def initialize(blob: bytes) -> None:
    initializer, initargs = pickle.loads(blob)
    initializer(*initargs)


# Functions that travel by reference (by module and name), with their pickle. Only those:
# one travelling by value carries the values of its globals and closure, which may change.
_by_reference: weakref.WeakKeyDictionary[Callable[..., Any], bytes] = weakref.WeakKeyDictionary()


def dumps_callable(fn: Any) -> bytes:
    if type(fn) is types.FunctionType:
        blob = _by_reference.get(fn)
        if blob is not None:
            return blob
    try:
        blob = cloudpickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise SerializationError(f"{name_of(fn)} could not be pickled to run in a worker: {exc!r}") from exc
    if type(fn) is types.FunctionType and fn.__module__ != "__main__":
        try:
            if pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL) == blob:  # what plain pickle does: a reference
                _by_reference[fn] = blob
        except Exception:  # noqa: BLE001 - not by reference, then
            pass
    return blob  # type: ignore[no-any-return]


def dumps_args(args: tuple[Any, ...], kwargs: dict[str, Any], fn: object) -> bytes:
    try:
        return payload.dumps_call(args, kwargs)
    except Exception as exc:
        raise SerializationError(f"the arguments of a call of {name_of(fn)} could not be pickled: {exc!r}") from exc


def dumps_chunk(chunk: list[tuple[Any, ...]], fn: object) -> bytes:
    try:
        return payload.dumps(chunk)
    except Exception as exc:
        raise SerializationError(f"a chunk of arguments for {name_of(fn)} could not be pickled: {exc!r}") from exc


def name_of(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
