"""Event sources: they accept events and hand them to the runtime's one delivery loop.

Sources sit above ``runtime/`` and see only ``SourceRuntime`` (``runtime/delivery.py``):
what an event source may ask (look up a function, count work in flight, deliver,
run a call). Nothing below knows which source an invocation came from.
``build_sources(...)`` makes one running source per declared topic and stream, and
one per timer trigger, and one per connector trigger (``connector.py``: RabbitMQ, MQTT,
Redis Streams, files, directories).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

from .connector import Connector
from .streams import StreamSource
from .timers import build_timer_sources
from .topics import TopicSource
from .triggers import Cron, Every, Stream, StreamConsumer, Topic, TopicSubscription

if TYPE_CHECKING:
    from ..runtime.delivery import Source
    from ..spec import FunctionSpec

T = TypeVar("T", TopicSubscription, StreamConsumer)

__all__ = ["Connector", "Cron", "Every", "Stream", "StreamConsumer", "Topic", "TopicSubscription", "build_sources"]


def build_sources(
    functions: Mapping[str, FunctionSpec], *, topics: Mapping[str, Topic], streams: Mapping[str, Stream], app_name: str
) -> list[Source]:
    """The running sources for an app's declared ``topics`` and ``streams`` and its ``functions``' triggers.

    :raises ValueError: a trigger names a topic or stream the app did not declare.
    """
    subscriptions = _triggers_by_name(functions, TopicSubscription, "topic", topics, verb="subscribes to", app_name=app_name)
    consumers = _triggers_by_name(functions, StreamConsumer, "stream", streams, verb="consumes", app_name=app_name)
    sources: list[Source] = [TopicSource(topics[topic], subs) for topic, subs in subscriptions.items()]
    sources += build_timer_sources(functions)
    sources += [StreamSource(streams[stream], cons) for stream, cons in consumers.items()]
    sources += [
        trigger.source(function) for function, spec in functions.items() for trigger in spec.triggers if isinstance(trigger, Connector)
    ]
    return sources


def _triggers_by_name(
    functions: Mapping[str, FunctionSpec], kind: type[T], field: str, declared: Mapping[str, object], *, verb: str, app_name: str
) -> dict[str, list[tuple[str, T]]]:
    """For each declared topic (``field="topic"``) or stream, the (function, trigger) pairs that read it."""
    found: dict[str, list[tuple[str, T]]] = {name: [] for name in declared}
    for function, spec in functions.items():
        for trigger in spec.triggers:
            if isinstance(trigger, kind):
                target = getattr(trigger, field)
                if target not in found:
                    raise ValueError(f"{function}: {verb} {field} {target!r}, which app {app_name!r} did not declare with app.{field}()")
                found[target].append((function, trigger))
    return found
