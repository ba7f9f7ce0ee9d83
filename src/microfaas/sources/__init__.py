"""Event sources: they turn events into invocations of the platform.

Sources sit above ``platform.py`` and call it; nothing below the platform knows
which source an invocation came from. ``build_sources(app)`` makes one running
source per declared topic and stream, and one per timer trigger.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

from .triggers import Cron, Every, Stream, StreamConsumer, Topic, TopicSubscription

if TYPE_CHECKING:
    from ..app import App
    from ..runtime.delivery import Source

T = TypeVar("T", TopicSubscription, StreamConsumer)

__all__ = ["Cron", "Every", "Stream", "StreamConsumer", "Topic", "TopicSubscription", "build_sources"]


def build_sources(app: App) -> list[Source]:
    """The sources for ``app``'s declared topics and streams and its functions' triggers.

    :raises ValueError: a trigger names a topic or stream the app did not declare.
    """
    # The running sources import app.py, which imports this package: import them here.
    from .streams import StreamSource
    from .timers import build_timer_sources
    from .topics import TopicSource

    subscriptions = _triggers_by_name(app, TopicSubscription, "topic", app.topics, verb="subscribes to")
    consumers = _triggers_by_name(app, StreamConsumer, "stream", app.streams, verb="consumes")
    sources: list[Source] = [TopicSource(app.topics[topic], subs) for topic, subs in subscriptions.items()]
    sources += build_timer_sources(app)
    sources += [StreamSource(app.streams[stream], cons) for stream, cons in consumers.items()]
    return sources


def _triggers_by_name(app: App, kind: type[T], field: str, declared: Mapping[str, object], *, verb: str) -> dict[str, list[tuple[str, T]]]:
    """For each declared topic (``field="topic"``) or stream, the (function, trigger) pairs that read it."""
    found: dict[str, list[tuple[str, T]]] = {name: [] for name in declared}
    for function, spec in app.functions.items():
        for trigger in spec.triggers:
            if isinstance(trigger, kind):
                target = getattr(trigger, field)
                if target not in found:
                    raise ValueError(f"{function}: {verb} {field} {target!r}, which app {app.name!r} did not declare with app.{field}()")
                found[target].append((function, trigger))
    return found
