"""Fault injection: make the next invocations of a function crash or time out, or its next starts fail.

How this works. ``faas.inject(name, crash=1, timeout=2, start_failure=1)`` arms
faults on the platform side; nothing is sent to the worker. When a call of
``name`` is given its container, the platform takes the next armed call fault,
if any, before it hands the call over:

* ``crash``: the container is killed with SIGKILL (``container.kill("injected")``)
  and the call is then sent to it, so the call ends exactly as under a real crash:
  ``ContainerCrashed``, the container replaced on demand, the stats' ``crashes``.
* ``timeout``: the container is killed as the timeout path kills it
  (``container.kill("timeout")``) and the call raises ``FunctionTimeout``.
* ``start_failure`` (counted per container start, not per call): the start fails
  as a real one does; the waiting call gets ``ColdStartFailed`` saying it was injected.

Either way the handler does not run on an attempt that gets a fault, so a test
knows exactly which attempts had side effects. Call faults are taken in the order
they were armed (within one ``inject`` call: crashes first, then timeouts).
Retries, dead letters, stats and lifecycle events follow from the fault as they
would from a real one: the platform's own code paths handle it.
"""

from __future__ import annotations

import collections
from typing import Final

from ..validation import is_int

__all__ = ["CRASH", "INJECTED", "TIMEOUT", "FaultPlan"]

CRASH: Final = "crash"
TIMEOUT: Final = "timeout"
# The kill reason of a container killed by an injected crash or by ``faas.kill``.
INJECTED: Final = "injected"


def _count(field: str, value: int) -> int:
    if not is_int(value) or value < 0:
        raise ValueError(f"inject: {field} must be an int >= 0, got {value!r}")
    return value


class FaultPlan:
    """The faults armed on one platform, per function."""

    def __init__(self) -> None:
        self._calls: dict[str, collections.deque[str]] = {}
        self._starts: collections.Counter[str] = collections.Counter()
        self._injected_calls: set[str] = set()  # invocation ids given a fault, until their failure is reported
        self._killed: set[str] = set()  # containers killed by faas.kill

    def killed(self, container_id: str) -> None:
        """Container ``container_id`` is being killed by ``faas.kill``."""
        self._killed.add(container_id)

    def was_injected(self, invocation_id: str, error: object) -> bool:
        """Whether the failure ``error`` of ``invocation_id`` came from an injected fault (once per fault)."""
        if invocation_id in self._injected_calls:
            self._injected_calls.discard(invocation_id)
            return True
        return getattr(error, "container_id", None) in self._killed

    def arm(self, name: str, *, crash: int = 0, timeout: int = 0, start_failure: int = 0) -> None:
        """Arm ``crash`` and ``timeout`` faults for the next calls of ``name``, ``start_failure`` for its next starts."""
        crash, timeout = _count("crash", crash), _count("timeout", timeout)
        start_failure = _count("start_failure", start_failure)
        if crash or timeout:
            self._calls.setdefault(name, collections.deque()).extend([CRASH] * crash + [TIMEOUT] * timeout)
        if start_failure:
            self._starts[name] += start_failure

    def take_call_fault(self, name: str, invocation_id: str) -> str | None:
        """The fault for the call of ``name`` being dispatched now (``"crash"``, ``"timeout"``), if one is armed."""
        queue = self._calls.get(name)
        if not queue:
            return None
        fault = queue.popleft()
        if not queue:
            del self._calls[name]
        self._injected_calls.add(invocation_id)
        return fault

    def take_start_failure(self, name: str) -> bool:
        """Whether the container of ``name`` being started now must fail to start."""
        if self._starts[name] <= 0:
            return False
        self._starts[name] -= 1
        if not self._starts[name]:
            del self._starts[name]
        return True

    def armed(self, name: str) -> dict[str, int]:
        """The faults still armed for ``name``: ``{"crash": n, "timeout": n, "start_failure": n}``."""
        calls = collections.Counter(self._calls.get(name, ()))
        return {CRASH: calls[CRASH], TIMEOUT: calls[TIMEOUT], "start_failure": self._starts[name]}

    def clear(self, name: str | None = None) -> None:
        """Disarm every fault (of ``name``, or of every function)."""
        if name is None:
            self._calls.clear()
            self._starts.clear()
        else:
            self._calls.pop(name, None)
            self._starts.pop(name, None)

    def __bool__(self) -> bool:
        """Whether any fault is armed (the platform's fast path skips the lookups otherwise)."""
        return bool(self._calls or self._starts)
