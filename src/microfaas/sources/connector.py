"""The base of triggers that read from a system outside the process (a broker, files).

A connector is declared like any trigger (``@app.function(triggers=[mf.RabbitMQ(...)])``)
and is a plain validated record until the platform starts: then ``source(function)``
makes the running ``Source`` that reads the outside system and hands each event to
the runtime's one delivery loop (``SourceRuntime.deliver``), acknowledging it there
only once it was handled or dead-lettered.

A new connector: subclass ``Connector`` (an ``attrs.frozen`` record that checks its
settings in ``__attrs_post_init__``, so bad input fails at decoration), write its
``Source`` in a module of its own in this package, and export the trigger from
``microfaas``. Nothing else changes: ``build_sources`` starts one source per
connector trigger.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..events import Trigger

if TYPE_CHECKING:
    from ..runtime.delivery import Source

__all__ = ["Connector"]


class Connector(Trigger):
    """A trigger fed by an outside system; the platform runs ``source(function)`` while it is up."""

    __slots__ = ()

    def source(self, function: str) -> Source:
        """The running source that delivers this trigger's events to ``function``."""
        raise NotImplementedError(f"{type(self).__name__} must define source(function)")
