"""Wiring triggers to sources: at start for the declared functions, and while running for deployed ones.

How this works. ``triggers_by_name`` groups the topic subscriptions and stream
consumers of some functions by the topic or stream they read (``build_sources``
uses it at start). ``TriggerWiring`` is the runtime's ``Wiring``: when a function
is deployed, updated or undeployed it replaces the old version's triggers by the
new one's, each kind the smallest way:

* a topic subscription is added to the topic's running source, or takes the new
  settings in place (its buffer is kept), or is removed: its running deliveries
  finish, and the messages it had accepted but not delivered go to the dead letters;
* a stream consumer is added (after the checkpoint it had, if any), kept (only its
  retry settings change), or stopped once its batches in delivery are done -- a
  changed consumer then starts again after that checkpoint, so per-key order holds;
* a timer or a connector whose trigger is unchanged keeps running (a timer keeps
  its schedule); a changed or removed one is stopped (a timer after its running
  tick) and the new one started;
* Http routes are not sources: the gateway looks them up per request, so only
  their collisions are checked here (by ``check_routes``, the gateway's own check).

Everything that could refuse is checked (``check``) before the deploy changes anything,
and what can still fail -- a connector that cannot reach its server -- is started first
(``open``): beside the old version's sources, its events held, so that the deploy either
completes (``finish``: the holds lift, topics and streams change, the old sources stop)
or fails with the old triggers running as they were (``undo``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ..errors import UnknownFunction
from .connector import Connector
from .streams import StreamSource
from .timers import TimerSource, build_timer_sources
from .topics import TopicSource
from .triggers import StreamConsumer, TopicSubscription

if TYPE_CHECKING:
    from ..runtime.call import Call
    from ..runtime.delivery import CallDelivery, Delivered, Delivery, Source
    from ..runtime.deploy import SourceHost
    from ..spec import FunctionSpec, Retries

__all__ = ["TriggerWiring", "triggers_by_name"]

T = TypeVar("T", TopicSubscription, StreamConsumer)


def triggers_by_name(
    functions: Mapping[str, FunctionSpec], kind: type[T], field: str, declared: Mapping[str, object], *, verb: str, app_name: str
) -> dict[str, list[tuple[str, T]]]:
    """For each declared topic (``field="topic"``) or stream, the (function, trigger) pairs that read it.

    :raises ValueError: a trigger names a topic or stream the app did not declare.
    """
    found: dict[str, list[tuple[str, T]]] = {name: [] for name in declared}
    for function, spec in functions.items():
        for trigger in spec.triggers:
            if isinstance(trigger, kind):
                target = getattr(trigger, field)
                if target not in found:
                    raise ValueError(f"{function}: {verb} {field} {target!r}, which app {app_name!r} did not declare with app.{field}()")
                found[target].append((function, trigger))
    return found


class TriggerWiring:
    """Starts and stops one function's triggers on a running platform (the runtime's ``Wiring``).

    :param check_routes: raises ``ValueError`` when the Http routes of the functions it
        is given collide (the gateway's ``build_routes``); None: routes are not checked.
    """

    def __init__(self, check_routes: Callable[[Mapping[str, FunctionSpec]], object] | None = None) -> None:
        self.check_routes = check_routes

    def check(self, host: SourceHost, name: str, spec: FunctionSpec) -> None:
        """:raises ValueError: ``spec``'s triggers cannot replace ``name``'s now (the message says why)."""
        topics = _running(host, TopicSource)
        streams = _running(host, StreamSource)
        app = host.app_name
        for topic, pairs in triggers_by_name({name: spec}, TopicSubscription, "topic", topics, verb="subscribes to", app_name=app).items():
            current = topics[topic].subscribers().get(name)
            for _, trigger in pairs:
                if current is not None and current.buffer_size != trigger.buffer_size:
                    raise ValueError(
                        f"{name}: the buffer_size of its subscription to topic {topic!r} cannot change while it runs "
                        f"({current.buffer_size} -> {trigger.buffer_size}): the messages in that buffer are accepted. Deploy "
                        f"with buffer_size={current.buffer_size} to change its other settings; to change buffer_size, "
                        f"undeploy {name!r}, deploy the new version, then faas.redrive({name!r}) sends back the messages "
                        "the old subscription had not delivered (undeploy keeps them as dead letters)"
                    )
        triggers_by_name({name: spec}, StreamConsumer, "stream", streams, verb="consumes", app_name=app)
        for timer in build_timer_sources({name: spec}):
            owner = host.sources.get(timer.key)
            if isinstance(owner, TimerSource) and owner.function != name:
                raise ValueError(
                    f"{name}: timer name {timer.name!r} is already used by a timer of {owner.function}; pass name=... to tell them apart"
                )
        previous = host.functions.get(name)
        mine = set(_connectors(name, previous)) if previous is not None else set()
        for key in _connectors(name, spec):
            if key in host.sources and key not in mine:
                raise ValueError(f"{name}: its trigger's source {key!r} is already run by another function")
        if self.check_routes is not None:
            self.check_routes({**host.functions, name: spec})

    async def rewire(self, host: SourceHost, name: str, previous: FunctionSpec | None, spec: FunctionSpec | None) -> None:
        """Replace the triggers of ``previous`` (None: a new function) by those of ``spec`` (None: undeployed)."""
        (await self.open(host, name, previous, spec)).finish()

    async def open(self, host: SourceHost, name: str, previous: FunctionSpec | None, spec: FunctionSpec | None) -> _Rewiring:
        """Start the timers and connectors ``spec`` adds or changes, beside the old ones, their events
        held until ``finish``; topics and streams change at ``finish`` (they cannot fail).

        :raises Exception: what a source raised before it was ready (``ConnectorUnreachable``): the
            sources started here are stopped again, and the old ones run on, as they were.
        """
        rewiring = _Rewiring(host, name, spec)
        timers = {timer.key: timer for timer in build_timer_sources({name: spec})} if spec is not None else {}
        starting: list[Source] = []
        for key, source in list(host.sources.items()):
            if isinstance(source, TimerSource) and source.function == name:
                kept = timers.get(key)
                if kept is not None and kept.trigger == source.trigger:
                    rewiring.kept_timers.append(source)
                    del timers[key]
                elif key not in timers:
                    rewiring.retired.append(key)
        starting += timers.values()
        old_connectors = _connectors(name, previous) if previous is not None else {}
        new_connectors = _connectors(name, spec) if spec is not None else {}
        rewiring.retired += [key for key in old_connectors if key not in new_connectors]
        starting += [trigger.source(name) for key, trigger in new_connectors.items() if old_connectors.get(key) != trigger]
        try:
            for source in starting:
                if source.key in host.sources:  # the old version's, changed: it runs on until the new one is up
                    rewiring.replaced[source.key] = host.detach_source(source.key)
                await host.start_source(source, rewiring.view)
                rewiring.started.append(source.key)
        except BaseException:
            rewiring.undo()
            raise
        return rewiring


class _Staged:
    """What a source started for a deploy under way sees of the platform: the new version's
    settings, and its deliveries held until the deploy completes (so nothing runs on a
    version that may not be deployed). Everything else is the platform's."""

    def __init__(self, host: SourceHost, name: str, spec: FunctionSpec | None) -> None:
        self._host = host
        self._name = name
        self._spec = spec
        self._ready = anyio.Event()

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._host, attribute)

    def function(self, name: str) -> FunctionSpec:
        if name == self._name and self._spec is not None and not self._ready.is_set():
            return self._spec
        return self._host.function(name)

    async def deliver(self, delivery: Delivery, retries: Retries) -> Delivered:
        await self._ready.wait()
        return await self._host.deliver(delivery, retries)

    async def run_call(self, call: Call[Any], delivery: CallDelivery, retries: Retries | None) -> None:
        await self._ready.wait()
        await self._host.run_call(call, delivery, retries)

    def release(self) -> None:
        self._ready.set()


class _Rewiring:
    """One deploy's triggers under way (see ``TriggerWiring.open``)."""

    def __init__(self, host: SourceHost, name: str, spec: FunctionSpec | None) -> None:
        self.host = host
        self.name = name
        self.spec = spec
        self.view = _Staged(host, name, spec)
        self.started: list[str] = []  # the keys of the sources started for the new version
        self.replaced: dict[str, tuple[Source, Any]] = {}  # old sources whose key a new one took, still running
        self.retired: list[str] = []  # old sources to stop once the new version serves
        self.kept_timers: list[TimerSource] = []  # unchanged timers: they keep their schedule

    def undo(self) -> None:
        """The deploy failed: stop what was started; the old sources keep their keys and run on."""
        for key in self.started:
            self.host.stop_source(key, cancel=True)  # nothing of theirs was delivered: their events were held
        for key, detached in self.replaced.items():
            self.host.reattach_source(key, detached)
        self.started, self.replaced = [], {}

    def finish(self) -> None:
        """The new version serves: let the new sources' events through, change topics and streams, retire the old."""
        host, name, spec = self.host, self.name, self.spec
        self.view.release()
        new = spec.triggers if spec is not None else ()
        why = "it was undeployed" if spec is None else "its new version does not"
        subscriptions = {t.topic: t for t in new if isinstance(t, TopicSubscription)}
        for topic in _running(host, TopicSource).values():
            if topic.name in subscriptions:
                assert spec is not None
                topic.subscribe(name, subscriptions[topic.name], spec.retries)
            elif name in topic.subscribers():
                gone = UnknownFunction(f"{name} no longer subscribes to topic {topic.name!r} ({why}); the message was not delivered")
                topic.unsubscribe(name, gone)
        consumers = {t.stream: t for t in new if isinstance(t, StreamConsumer)}
        for stream in _running(host, StreamSource).values():
            if stream.name in consumers:
                assert spec is not None
                stream.consume(name, consumers[stream.name], spec.retries)
            elif name in stream.consumers():
                stream.unconsume(name)
        for timer in self.kept_timers:
            assert spec is not None
            timer.retries = spec.retries
        for key in self.retired:
            host.stop_source(key)
        for detached in self.replaced.values():
            host.end_source(detached)


S = TypeVar("S", TopicSource, StreamSource)


def _running(host: SourceHost, kind: type[S]) -> dict[str, S]:
    """The platform's topics (or streams) by name: one source per declared one."""
    return {source.name: source for source in host.sources.values() if isinstance(source, kind)}


def _connectors(name: str, spec: FunctionSpec) -> dict[str, Connector]:
    """``spec``'s connector triggers by the key of the source each runs."""
    return {trigger.source(name).key: trigger for trigger in spec.triggers if isinstance(trigger, Connector)}
