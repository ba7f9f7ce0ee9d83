"""How functions and arguments travel to containers, with cloudpickle.

A function goes to its containers in a ``Bundle``. It travels by reference (the
container imports it by name) when its module can be imported there -- the
node's zygote has then already imported that module, so a cold start does not
import it again -- and by value otherwise: functions in ``__main__``, closures,
and modules a container cannot import (pytest's importlib mode, a notebook).
A module the zygote failed to import is switched to by-value for good.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import cloudpickle

from .. import payload, protocol
from ..errors import SerializationError
from ..events import Message
from ..worker import Bundle, FunctionRef

if TYPE_CHECKING:
    from ..spec import FunctionSpec

__all__ = ["Shipper", "dump_args", "dumps_by_value", "loads_or_blob"]

# Room in a frame for a call's meta (its kind, invocation id, attempt, timeout), beside the arguments.
_CALL_META_ROOM: Final = 4096

# A message's fields other than ``data`` are str, int, float and a dict of str (its validators see to it),
# so a message whose data is plain pickles with plain pickle (every topic and broker message is one call).
payload.plain_record(Message, ("data",))


class Shipper:
    """Pickles the app's functions (cached per function) and call arguments."""

    def __init__(self, specs: Mapping[str, FunctionSpec]) -> None:
        self._specs = specs
        self._bundles: dict[str, bytes] = {}
        self._by_value: set[str] = set()
        self._functions_by_value: set[str] = set()  # deployed functions: their code as deployed, not as imported now

    def modules_to_preload(self) -> tuple[str, ...]:
        """The modules defining the app's functions that a zygote can import ahead of time."""
        modules: set[str] = set()
        for spec in self._specs.values():
            for f in (spec.fn, spec.init):
                module = getattr(f, "__module__", None) if f is not None else None
                if module and _importable(module):
                    modules.add(module)
        return tuple(sorted(modules))

    def ship_by_value(self, modules: Iterable[str]) -> None:
        """Send the functions of these modules by value from now on (their import failed)."""
        self._by_value.update(modules)
        self._bundles.clear()

    def ship_function_by_value(self, name: str) -> None:
        """Send function ``name`` (a deployed version) by value, with the code it was deployed with."""
        self._functions_by_value.add(name)
        self._bundles.pop(name, None)

    def bundle(self, name: str) -> bytes:
        """The pickled ``Bundle`` of function ``name`` (its scheduler name: ``resize@v2`` for a deployed version).

        :raises SerializationError: the function or its init cannot be pickled.
        """
        blob = self._bundles.get(name)
        if blob is None:
            spec = self._specs[name]
            modules = {getattr(f, "__module__", None) for f in (spec.fn, spec.init) if f is not None}
            forced = name in self._functions_by_value
            by_value = [sys.modules[m] for m in modules if m and m in sys.modules and (forced or m in self._by_value or not _importable(m))]
            fn = spec.fn if getattr(spec.fn, "__module__", None) in {m.__name__ for m in by_value} else _reference(spec.fn)
            bundle = Bundle(name=spec.name, fn=fn, init=spec.init, memory_mb=spec.memory_mb, concurrency=spec.concurrency)
            blob = self._bundles[name] = _dumps_by_value(bundle, by_value, name)
        return blob


def dumps_by_value(obj: object, functions: Iterable[Callable[..., Any] | None], name: str) -> bytes:
    """``obj`` pickled with the modules of ``functions`` by value (what a deployment keeps).

    :raises SerializationError: naming ``name``.
    """
    modules = {getattr(f, "__module__", None) for f in functions if f is not None}
    return _dumps_by_value(obj, [sys.modules[m] for m in modules if m and m in sys.modules and m != "__main__"], name)


def dump_args(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The pickled arguments of a call of ``name``.

    :raises SerializationError: an argument cannot be pickled.
    """
    try:
        blob = payload.dumps_call(args, kwargs)
    except Exception as exc:
        raise SerializationError(f"{name}: the arguments could not be pickled: {exc!r}") from exc
    if len(blob) > protocol.MAX_FRAME - _CALL_META_ROOM:
        limit = protocol.MAX_FRAME
        raise SerializationError(f"{name}: the arguments pickle to {len(blob)} bytes, more than one frame carries ({limit} bytes)")
    return blob


def loads_or_blob(blob: bytes) -> Any:
    try:
        return cloudpickle.loads(blob)
    except Exception:  # noqa: BLE001 - keep the raw payload rather than lose the event
        return blob


def _importable(module_name: str) -> bool:
    """Whether a worker can import ``module_name`` by name (else its functions ship by value)."""
    module = sys.modules.get(module_name)
    if module_name == "__main__" or module is None:
        return False
    top = module_name.partition(".")[0]
    if top in sys.builtin_module_names:
        return True
    spec = importlib.machinery.PathFinder.find_spec(top, sys.path)
    if spec is None:
        return False
    module_file = getattr(module, "__file__", None)
    if top == module_name and spec.origin and module_file:
        return os.path.realpath(spec.origin) == os.path.realpath(module_file)
    return True


def _reference(fn: Callable[..., Any]) -> Callable[..., Any] | FunctionRef:
    """Ship ``fn`` by name when its module attribute is the handle that wraps it."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or "<" in qualname or module not in sys.modules:
        return fn
    obj: Any = sys.modules[module]
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if obj is not None and obj is not fn and getattr(obj, "__wrapped__", None) is fn:
        return FunctionRef(module, qualname)
    return fn


def _dumps_by_value(obj: object, modules: list[Any], name: str) -> bytes:
    registered = []
    try:
        for module in modules:
            try:
                cloudpickle.register_pickle_by_value(module)
                registered.append(module)
            except ValueError:
                pass  # already registered by the user
        return cloudpickle.dumps(obj)
    except Exception as exc:
        raise SerializationError(f"{name}: the function or its init could not be pickled: {exc!r}") from exc
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)
