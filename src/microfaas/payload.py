"""Pickling call arguments and results: plain ``pickle`` when it is safe, cloudpickle otherwise.

cloudpickle can ship what ``pickle`` cannot (lambdas, closures, classes defined in
``__main__``), but it builds a new pickler for every call, which costs several
times more than ``pickle.dumps`` for a small payload. A value made only of
built-in scalars and small built-in containers pickles the same either way, so
that is the fast path; everything else goes through cloudpickle. Loading needs
no choice: cloudpickle's output is ordinary pickle data.

This module imports nothing from microfaas: the platform and the containers both use it.
"""

from __future__ import annotations

import pickle
from typing import Any, Final

import cloudpickle

__all__ = ["dumps", "dumps_call", "loads", "plain_record"]

_SCALARS: Final = frozenset({type(None), bool, int, float, complex, str, bytes})
_CONTAINERS: Final = frozenset({tuple, list, dict})
# A container larger or deeper than this is not inspected; it goes through cloudpickle.
_MAX_ITEMS: Final = 64
_MAX_DEPTH: Final = 3


# Record classes (in importable modules, so both picklers name them) whose other fields are
# scalars or plain by construction: an instance is plain when these fields are.
_RECORDS: dict[type, tuple[str, ...]] = {}


def plain_record(kind: type, fields: tuple[str, ...]) -> None:
    """Let instances of ``kind`` take the fast path when their ``fields`` are plain (the rest must always be)."""
    _RECORDS[kind] = fields


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is built-in scalars in (at most a few levels of) built-in containers, or a plain record."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    fields = _RECORDS.get(kind)
    if fields is not None:
        for field in fields:
            item = getattr(value, field)
            if type(item) not in _SCALARS and not _plain(item, depth + 1):
                return False
        return True
    if kind not in _CONTAINERS or depth == _MAX_DEPTH or len(value) > _MAX_ITEMS:
        return False
    # Loops, not all() over generators: this runs for every call's arguments and result.
    if kind is dict:
        for key, item in value.items():
            if type(key) not in _SCALARS or (type(item) not in _SCALARS and not _plain(item, depth + 1)):
                return False
        return True
    for item in value:  # noqa: SIM110 - a loop is faster than all() over a generator
        if type(item) not in _SCALARS and not _plain(item, depth + 1):
            return False
    return True


def dumps(value: Any) -> bytes:
    """Pickle ``value`` for another process of this program (raises what pickling raises)."""
    if _plain(value):
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def dumps_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Pickle a call's arguments as ``dumps((args, kwargs))`` would (the pair itself needs no look)."""
    if _plain(args, 1) and (not kwargs or _plain(kwargs, 1)):
        return pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    return cloudpickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)


loads = pickle.loads
