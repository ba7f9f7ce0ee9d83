"""The container lifecycle: container state x fact -> next state, in one table.

How this works. Every container the scheduler creates has a ``ContainerState``
(``actions.py``). What can happen to it is a *fact*: either one the shell reports
(``container_started``, ``container_start_failed``, ``container_exited``,
``call_finished``, ``node_failed``, named after the ``Scheduler`` method that
takes it) or one of the scheduler's own decisions (``run_on`` a call in it,
``stop_container``, or ``start_withdrawn``: shutdown came before its node, so the
shell never heard of it). ``TRANSITIONS`` lists every legal move. A fact missing
from a state's row means the shell and the core disagree about the container --
a bug in the shell, never the user's doing -- and ``next_state`` raises
``CoreMisuse``, which names the container, the state the core holds and the fact.

Two rules do not fit a table, so they sit here as prose and the scheduler
applies them:

* Slots. A container runs ``concurrency`` calls at once and is BUSY while any
  slot is in use. ``run_on`` takes a slot (and ``RunOn(queued=True)`` queues a
  call behind a full one, leaving the state alone). ``call_finished`` frees one;
  the container moves BUSY -> IDLE only when that was its last busy slot and no
  waiting or queued call takes it; until then it stays BUSY. A
  ``call_finished`` for a container with no busy slot (STARTING, IDLE) is
  illegal.
* Awaiting a node. A STARTING container reserved on a node that is still being
  acquired has had no ``StartContainer`` yet, so no fact from the shell may
  concern it until ``node_acquired``.

``ContainerBook`` holds the scheduler's records and is the one place their
state changes: ``move`` (and ``stop``/``forget``, which also give a container's
room back) look the move up in the table first, so an illegal fact changes
nothing. A container it no longer tracks is STOPPED: ids (``c-1, c-2, ...``) are
never reused, so it tells an id it issued from one it never did (``unknown``).

Stale facts. The shell carries out actions concurrently, so a few facts arrive
after the core has moved on. Each is decided here, explicitly:

* ``call_finished`` on STOPPING: a call that was running when shutdown stopped
  its container replied before the process died. Legal, changes nothing.
* ``call_finished`` on STOPPED: a call cut short by a crash or a lost node is
  reported after the exit (a shell whose exit and reply reports race).
  Legal, changes nothing: the exit freed the slots.
* ``container_start_failed`` on STOPPING: shutdown stopped a container that was
  still starting, then the start failed. Legal: it is gone, and no exit will
  follow since no process came up.
* ``container_started`` on STOPPING (shutdown came first): the shell must not
  send it. It asks ``Scheduler.container(id)`` whether the record is still
  STARTING, and if not stops the process it got, then reports the exit.
* ``container_exited`` on STOPPED: the exit of a container lost with its node
  (``node_failed`` forgets them, "no exit will be reported"): the shell must
  not send it.

No I/O, no clock.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from .actions import ContainerRecord, ContainerState, StopContainer
from .functions import FunctionState
from .resources import ResourceManager
from .usage import UsageMeter

__all__ = ["TRANSITIONS", "ContainerBook", "CoreMisuse", "Fact", "next_state"]


class Fact(enum.StrEnum):
    """What can happen to a container: a fact the shell reports, or a decision of the core."""

    # Reported by the shell, through the ``Scheduler`` method of the same name.
    CONTAINER_STARTED = "container_started"
    CONTAINER_START_FAILED = "container_start_failed"
    CONTAINER_EXITED = "container_exited"
    CALL_FINISHED = "call_finished"
    NODE_FAILED = "node_failed"
    # Decided by the scheduler.
    RUN_ON = "run_on"
    STOP_CONTAINER = "stop_container"
    START_WITHDRAWN = "start_withdrawn"


_STARTING, _IDLE, _BUSY = ContainerState.STARTING, ContainerState.IDLE, ContainerState.BUSY
_STOPPING, _STOPPED = ContainerState.STOPPING, ContainerState.STOPPED

TRANSITIONS: Final[Mapping[ContainerState, Mapping[Fact, ContainerState]]] = {
    _STARTING: {
        Fact.CONTAINER_STARTED: _IDLE,  # then takes waiting requests at once (run_on)
        Fact.CONTAINER_START_FAILED: _STOPPED,
        Fact.CONTAINER_EXITED: _STOPPED,  # died before it was ready: counted as a failed start
        Fact.NODE_FAILED: _STOPPED,
        Fact.STOP_CONTAINER: _STOPPING,  # shutdown
        Fact.START_WITHDRAWN: _STOPPED,
    },
    _IDLE: {
        Fact.RUN_ON: _BUSY,
        Fact.STOP_CONTAINER: _STOPPING,  # its keep-alive ran out, evicted, or shutdown
        Fact.CONTAINER_EXITED: _STOPPED,  # crashed or was killed from outside
        Fact.NODE_FAILED: _STOPPED,
    },
    _BUSY: {
        Fact.RUN_ON: _BUSY,  # another free slot taken
        Fact.CALL_FINISHED: _IDLE,  # only when it frees the last busy slot (see "Slots")
        Fact.STOP_CONTAINER: _STOPPING,  # shutdown
        Fact.CONTAINER_EXITED: _STOPPED,  # crashed, timed out or ran out of memory
        Fact.NODE_FAILED: _STOPPED,
    },
    _STOPPING: {
        Fact.CONTAINER_EXITED: _STOPPED,
        Fact.NODE_FAILED: _STOPPED,  # gone with its node: no exit will be reported
        Fact.CALL_FINISHED: _STOPPING,  # stale: a reply that beat the exit at shutdown
        Fact.CONTAINER_START_FAILED: _STOPPED,  # stale: stopped while starting, then the start failed
    },
    _STOPPED: {
        Fact.CALL_FINISHED: _STOPPED,  # stale: a call cut short by the exit, reported after it
    },
}


class CoreMisuse(RuntimeError):
    """A fact fed to the scheduler core cannot be true of the container it names.

    The shell (``runtime/cluster.py``, ``sim.py``) and the core disagree about the
    container: a bug in the shell, not something a user of microfaas did, so it
    is no ``FaaSError``.

    :param container_id: the container the fact was about.
    :param state: the state the core holds for it (None: an id it never issued).
    :param fact: what the shell reported, or what the core tried to decide.
    :param detail: why, when the state alone does not say.
    """

    def __init__(self, container_id: str, state: ContainerState | None, fact: Fact, detail: str = "") -> None:
        self.container_id = container_id
        self.state = state
        self.fact = fact
        if state is None:
            message = f"container {container_id} is unknown (this scheduler never created it): {fact} is not legal"
        elif detail:
            message = f"container {container_id} is {state}, {detail}: {fact} is not legal"
        else:
            legal = ", ".join(sorted(TRANSITIONS[state]))
            message = f"container {container_id} is {state}: {fact} is not legal in state {state} (legal there: {legal})"
        super().__init__(f"{message}; the shell that fed the scheduler is out of step with it")


def next_state(container_id: str, state: ContainerState, fact: Fact) -> ContainerState:
    """The state a container in ``state`` moves to on ``fact``.

    :raises CoreMisuse: the fact is not legal in that state.
    """
    try:
        return TRANSITIONS[state][fact]
    except KeyError:
        raise CoreMisuse(container_id, state, fact) from None


class ContainerBook:
    """The scheduler's records of its containers; their state changes only through ``TRANSITIONS``.

    It creates records (ids ``c-1, c-2, ...``, never reused), moves them, takes them
    out of service (their room goes back to the node, their slots to the function's
    bookkeeping) and judges shell facts about containers that are no longer live.

    :param resources: the node bookkeeping that holds each container's room.
    :param functions: the scheduler's per-function bookkeeping, by name.
    """

    def __init__(self, resources: ResourceManager, functions: Mapping[str, FunctionState]) -> None:
        self.resources = resources
        self.functions = functions
        self.live: dict[str, ContainerRecord] = {}  # starting, idle, busy
        self.stopping: dict[str, ContainerRecord] = {}
        self.usage = UsageMeter()
        self._next = 1

    def new(self, fn: FunctionState, node_id: str, *, pinned: bool, spare: bool, now: float) -> ContainerRecord:
        """A STARTING container of ``fn`` on ``node_id``, whose room the caller has reserved."""
        profile = fn.profile
        container_id = f"c-{self._next}"
        self._next += 1
        rec = ContainerRecord(
            id=container_id,
            function=profile.name,
            node_id=node_id,
            memory_mb=profile.memory_mb,
            concurrency=profile.concurrency,
            pinned=pinned,
            last_used=now,
            state_since=now,
            awaiting_node=not self.resources.is_ready(node_id),
            spare=spare,
        )
        fn.containers[container_id] = rec
        self.live[container_id] = rec
        fn.starting_slots += rec.concurrency
        return rec

    def move(self, rec: ContainerRecord, fact: Fact, now: float) -> None:
        """Move ``rec`` by the table, accounting the time it spent in its old state.

        :raises CoreMisuse: ``fact`` is not legal in its state.
        """
        try:
            state = TRANSITIONS[rec.state][fact]  # next_state, inlined: this is on the hot path
        except KeyError:
            raise CoreMisuse(rec.id, rec.state, fact) from None
        if state is not rec.state:
            self.usage.record(rec, state, now)

    def stop(self, rec: ContainerRecord, reason: str, now: float) -> StopContainer:
        """Decide to stop ``rec`` (``idle``, ``evicted``, ``shutdown``); it is STOPPING until its exit."""
        self.forget(rec, Fact.STOP_CONTAINER, now)
        self.stopping[rec.id] = rec
        return StopContainer(container_id=rec.id, reason=reason)

    def forget(self, rec: ContainerRecord, fact: Fact, now: float) -> None:
        """Take a live container out of service (to STOPPING or STOPPED, as ``fact`` says) and give back its room.

        :raises CoreMisuse: ``fact`` is not legal in its state; nothing has changed then.
        """
        state = next_state(rec.id, rec.state, fact)
        fn = self.functions[rec.function]
        del self.live[rec.id]
        del fn.containers[rec.id]
        fn.available.pop(rec.id, None)
        if rec.state is _STARTING:
            fn.starting_slots -= rec.concurrency
        self.usage.record(rec, state, now)
        self.resources.free(rec.node_id, rec.memory_mb, now=now)

    def stale(self, container_id: str, rec: ContainerRecord | None, fact: Fact, now: float) -> None:
        """A shell fact about a container that is not live: stopping, gone, or never handed to the shell.

        Legal only where the table has a row for it (a stale fact, see the module
        doc), and then it changes at most the record of a stopping container.

        :raises CoreMisuse: the table has no such row, or the id was never issued.
        """
        if rec is not None:  # live, but still awaiting its node: the shell was never told to start it
            raise CoreMisuse(container_id, rec.state, fact, f"awaiting node {rec.node_id}, never handed to the shell")
        stopping = self.stopping.get(container_id)
        if stopping is not None:
            if next_state(container_id, stopping.state, fact) is _STOPPED:
                del self.stopping[container_id]
                self.move(stopping, fact, now)
            return
        if not self.issued(container_id):
            raise CoreMisuse(container_id, None, fact)
        next_state(container_id, _STOPPED, fact)  # an id it issued and no longer tracks: stopped

    def issued(self, container_id: str) -> bool:
        """Whether this book ever created ``container_id``."""
        number = container_id[2:]
        if not (container_id.startswith("c-") and number.isascii() and number.isdigit()):
            return False
        n = int(number)
        return 0 < n < self._next and container_id == f"c-{n}"
