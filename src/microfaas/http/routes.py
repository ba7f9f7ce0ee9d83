"""The gateway's routing table: one ``Route`` per ``mf.Http`` trigger.

A path is literal segments and ``{name}`` segments. Two routes of one method collide
when their paths have the same shape (parameter names erased); the gateway's own
paths (``/healthz``, ``/v1/functions/...``) are reserved. Where two routes differ, a
literal segment wins over a parameter at the first place they differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

import attrs

from ..events import Http

if TYPE_CHECKING:
    from ..spec import FunctionSpec

__all__ = ["HEALTH_PATH", "INVOKE_API_PREFIX", "Route", "build_routes", "is_invoke_api"]

INVOKE_API_PREFIX: Final = "/v1/functions"
HEALTH_PATH: Final = "/healthz"


@attrs.frozen
class Route:
    """One ``mf.Http`` trigger: ``method`` and ``path`` lead to ``function``."""

    trigger: Http
    function: str
    # (is_param, text) per segment; text is the literal, or the parameter's name.
    segments: tuple[tuple[bool, str], ...]

    @classmethod
    def of(cls, trigger: Http, function: str) -> Route:
        """The route of ``trigger``, a trigger of ``function``."""
        segments = tuple((s.startswith("{"), s.strip("{}")) for s in trigger.path[1:].split("/"))
        return cls(trigger, function, segments)

    @property
    def shape(self) -> tuple[str, ...]:
        """The path with parameter names erased: two routes of one method and shape collide."""
        return tuple("{}" if is_param else text for is_param, text in self.segments)

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The path parameters when a request path's ``segments`` match this route, else None."""
        if len(segments) != len(self.segments):
            return None
        params = {}
        for (is_param, text), segment in zip(self.segments, segments, strict=True):
            if is_param:
                if not segment:
                    return None
                params[text] = segment
            elif text != segment:
                return None
        return params


def is_invoke_api(path: str) -> bool:
    """Whether ``path`` is under the invoke API's prefix."""
    return path == INVOKE_API_PREFIX or path.startswith(INVOKE_API_PREFIX + "/")


def build_routes(functions: Mapping[str, FunctionSpec]) -> list[Route]:
    """The routes of every Http trigger of ``functions``, in matching order.

    :raises ValueError: a route collides with another, or with the gateway's own paths.
    """
    routes: list[Route] = []
    seen: dict[tuple[str, tuple[str, ...]], Route] = {}
    for name, spec in functions.items():
        for trigger in spec.triggers:
            if not isinstance(trigger, Http):
                continue
            path = trigger.path
            if path == HEALTH_PATH or is_invoke_api(path):
                raise ValueError(f"{name}: Http path {path!r} is reserved by the gateway ({HEALTH_PATH}, {INVOKE_API_PREFIX}/...)")
            route = Route.of(trigger, name)
            other = seen.setdefault((trigger.method, route.shape), route)
            if other is not route:
                theirs = f"{other.trigger.method} {other.trigger.path} of {other.function}"
                raise ValueError(f"{name}: Http route {trigger.method} {path} collides with {theirs}")
            routes.append(route)
    # A literal segment wins over a parameter at the first place two routes differ.
    routes.sort(key=lambda r: tuple(is_param for is_param, _ in r.segments))
    return routes
