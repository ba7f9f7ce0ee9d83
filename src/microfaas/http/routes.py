"""The gateway's routing table: one ``Route`` per ``mf.Http`` trigger.

A path is literal segments and ``{name}`` segments; the last may be a greedy
``{name+}``, which takes the rest of the path (one segment or more, slashes
included). Two routes of one method collide when their paths have the same shape
(parameter names erased); the gateway's own paths (``/healthz``, ``/v1/functions/...``)
are reserved. Where two routes could both match, the more specific wins, as in API
Gateway: at the first place they differ a literal segment beats a parameter, which
beats a greedy one; then a route of the request's method beats an ``ANY`` route.
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

# The kinds of a route's segments, in the order a match prefers them.
LITERAL: Final = 0
PARAM: Final = 1
GREEDY: Final = 2


@attrs.frozen
class Route:
    """One ``mf.Http`` trigger: ``method`` and ``path`` lead to ``function``."""

    trigger: Http
    function: str
    # (kind, text) per segment: kind is LITERAL, PARAM or GREEDY; text is the literal, or the parameter's name.
    segments: tuple[tuple[int, str], ...]

    @classmethod
    def of(cls, trigger: Http, function: str) -> Route:
        """The route of ``trigger``, a trigger of ``function``."""
        segments = tuple(
            ((GREEDY if s.endswith("+}") else PARAM) if s.startswith("{") else LITERAL, s.strip("{+}")) for s in trigger.path[1:].split("/")
        )
        return cls(trigger, function, segments)

    @property
    def key(self) -> str:
        """The route as API Gateway names it: ``"GET /items/{id}"``."""
        return f"{self.trigger.method} {self.trigger.path}"

    @property
    def shape(self) -> tuple[str, ...]:
        """The path with parameter names erased: two routes of one method and shape collide."""
        return tuple(("{}", "{+}")[kind - 1] if kind else text for kind, text in self.segments)

    def allows(self, method: str) -> bool:
        """Whether this route answers ``method`` (a GET route answers HEAD; an ANY route, everything)."""
        mine = self.trigger.method
        return mine in (method, "ANY") or (method == "HEAD" and mine == "GET")

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The path parameters when a request path's ``segments`` match this route, else None."""
        mine = self.segments
        greedy = bool(mine) and mine[-1][0] == GREEDY
        if len(segments) != len(mine) and not (greedy and len(segments) > len(mine)):
            return None
        params = {}
        for i, (kind, text) in enumerate(mine):
            if kind == GREEDY:
                rest = "/".join(segments[i:])
                if not rest:
                    return None
                params[text] = rest
            elif kind == PARAM:
                if not segments[i]:
                    return None
                params[text] = segments[i]
            elif text != segments[i]:
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
    # The more specific route first: by segment kind at the first place two routes differ,
    # then a route of one method before an ANY route.
    routes.sort(key=lambda r: (tuple(kind for kind, _ in r.segments), r.trigger.method == "ANY"))
    return routes
