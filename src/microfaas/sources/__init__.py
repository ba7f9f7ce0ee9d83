"""Event sources: they accept events and hand them to the runtime's one delivery loop.

Sources sit above ``runtime/`` and see only ``SourceRuntime`` (``runtime/delivery.py``):
what an event source may ask (look up a function, count work in flight, deliver,
run a call). Nothing below knows which source an invocation came from.
``build_sources(...)`` makes one running source per declared topic and stream, and
one per timer trigger, and one per connector trigger (``connector.py``: RabbitMQ, MQTT,
Redis Streams, files, directories). ``TriggerWiring`` (``wiring.py``) wires the
triggers of functions deployed while the platform runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .connector import Connector
from .streams import StreamSource
from .timers import build_timer_sources
from .topics import TopicSource
from .triggers import Cron, Every, Stream, StreamConsumer, Topic, TopicSubscription
from .wiring import TriggerWiring, triggers_by_name

if TYPE_CHECKING:
    from ..runtime.delivery import Source
    from ..spec import FunctionSpec

__all__ = ["Connector", "Cron", "Every", "Stream", "StreamConsumer", "Topic", "TopicSubscription", "TriggerWiring", "build_sources"]


def build_sources(
    functions: Mapping[str, FunctionSpec], *, topics: Mapping[str, Topic], streams: Mapping[str, Stream], app_name: str
) -> list[Source]:
    """The running sources for an app's declared ``topics`` and ``streams`` and its ``functions``' triggers.

    :raises ValueError: a trigger names a topic or stream the app did not declare.
    """
    subscriptions = triggers_by_name(functions, TopicSubscription, "topic", topics, verb="subscribes to", app_name=app_name)
    consumers = triggers_by_name(functions, StreamConsumer, "stream", streams, verb="consumes", app_name=app_name)
    sources: list[Source] = [TopicSource(topics[topic], subs) for topic, subs in subscriptions.items()]
    sources += build_timer_sources(functions)
    sources += [StreamSource(streams[stream], cons) for stream, cons in consumers.items()]
    sources += [
        trigger.source(function) for function, spec in functions.items() for trigger in spec.triggers if isinstance(trigger, Connector)
    ]
    return sources
