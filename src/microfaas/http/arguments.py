"""The invoke API's arguments: a JSON body ``{"args": [...], "kwargs": {...}}``, checked against the handler.

Only ``json.loads`` reads what the network sent (nothing is unpickled), and it
rejects ``NaN`` and ``Infinity``, which are not JSON. The arguments are bound to the
handler's signature before a container is taken, so a call that cannot bind is a
400, not a ``FunctionError`` from inside the container.
"""

from __future__ import annotations

import inspect
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..spec import FunctionSpec

__all__ = ["check_arguments", "parse_invoke_body"]


def parse_invoke_body(body: bytes) -> tuple[list[Any], dict[str, Any]]:
    """The ``args`` and ``kwargs`` of an invoke request body ``{"args": [...], "kwargs": {...}}``.

    An empty body means no arguments.

    :raises ValueError: the body is not such a JSON object (the message says why).
    """
    if not body.strip():
        return [], {}
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f'the body must be a JSON object {{"args": [...], "kwargs": {{...}}}}, got {type(data).__name__}')
    unknown = sorted(set(data) - {"args", "kwargs"})
    if unknown:
        raise ValueError(f'the body may only hold "args" and "kwargs", not {", ".join(map(repr, unknown))}')
    args, kwargs = data.get("args", []), data.get("kwargs", {})
    if not isinstance(args, list):
        raise ValueError(f'"args" must be a JSON array, got {type(args).__name__}')
    if not isinstance(kwargs, dict):
        raise ValueError(f'"kwargs" must be a JSON object, got {type(kwargs).__name__}')
    return args, kwargs


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_arguments(spec: FunctionSpec, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Raise ``ValueError`` when the handler's signature does not accept these arguments."""
    try:
        signature = inspect.signature(spec.fn)
    except (TypeError, ValueError):
        return  # no signature to check against; the container will tell
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise ValueError(f"the arguments do not match {spec.name}{signature}: {exc}") from None
