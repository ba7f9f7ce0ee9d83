"""Event sources: they turn events into invocations of the platform.

Sources sit above ``platform.py`` and call it; nothing below the platform knows
which source an invocation came from. ``build_sources(app)`` makes one running
source per declared topic and stream, and one per timer trigger.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .triggers import Cron, Every, Stream, StreamConsumer, Topic, TopicSubscription

if TYPE_CHECKING:
    from ..app import App
    from ..delivery import Source

__all__ = ["Cron", "Every", "Stream", "StreamConsumer", "Topic", "TopicSubscription", "build_sources"]


def build_sources(app: App) -> list[Source]:
    """The sources for ``app``'s declared topics and streams and its functions' triggers.

    :raises ValueError: a trigger names a topic or stream the app did not declare.
    """
    from .topics import TopicSource  # the running sources import app.py, which imports this package

    subscriptions: dict[str, list[tuple[str, TopicSubscription]]] = {name: [] for name in app.topics}
    for name, spec in app.functions.items():
        for trigger in spec.triggers:
            if isinstance(trigger, TopicSubscription):
                if trigger.topic not in subscriptions:
                    raise ValueError(
                        f"{name}: subscribes to topic {trigger.topic!r}, which app {app.name!r} did not declare with app.topic()"
                    )
                subscriptions[trigger.topic].append((name, trigger))
    sources: list[Source] = [TopicSource(app.topics[topic], subs) for topic, subs in subscriptions.items()]
    from .timers import build_timer_sources  # timers: one source per Every / Cron trigger

    sources += build_timer_sources(app)
    # Streams: one StreamSource per declared stream, with the functions consuming it.
    from .streams import StreamSource

    consumers: dict[str, list[tuple[str, StreamConsumer]]] = {name: [] for name in app.streams}
    for name, spec in app.functions.items():
        for trigger in spec.triggers:
            if isinstance(trigger, StreamConsumer):
                if trigger.stream not in consumers:
                    raise ValueError(
                        f"{name}: consumes stream {trigger.stream!r}, which app {app.name!r} did not declare with app.stream()"
                    )
                consumers[trigger.stream].append((name, trigger))
    sources += [StreamSource(app.streams[stream], cons) for stream, cons in consumers.items()]
    return sources
