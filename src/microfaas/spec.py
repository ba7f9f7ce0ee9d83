"""The settings records every layer shares: ``FunctionSpec`` and ``Retries``, and their validators.

Settings are validated when they are built: a bad value raises ``ValueError``
naming the function and the field (``"resize: memory_mb must be an int >= 1, got 0"``).
This module sits at the bottom with ``validation``, ``events`` and ``errors``: it
imports nothing of microfaas's but them, so the core, the runtime and the sources can all read a
``FunctionSpec`` without importing the app that declared it.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any, TypedDict

import attrs

from .events import Trigger
from .validation import Validator, int_at_least, is_int, is_number, name_or_type, seconds

__all__ = ["NAME_PATTERN", "FunctionSettings", "FunctionSpec", "Retries"]

NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


def _fail(instance: Any, field: str, expectation: str, value: object) -> ValueError:
    return ValueError(f"{name_or_type(instance)}: {field} must be {expectation}, got {value!r}")


def _int_at_least(minimum: int, *, optional: bool = False) -> Validator:
    return int_at_least(minimum, optional=optional, owner=name_or_type)


def _seconds(*, positive: bool, optional: bool) -> Validator:
    return seconds(positive=positive, optional=optional, owner=name_or_type)


@attrs.frozen
class Retries:
    """How a spawned call or an event is retried after a failure.

    The n-th retry waits ``min(max_delay, initial_delay * backoff ** (n - 1))`` seconds,
    with full jitter when ``jitter`` is set (AWS's advice for retry storms).

    :param max_retries: extra attempts after the first.
    :param initial_delay: seconds before the first retry.
    :param backoff: multiplier per further retry.
    :param max_delay: cap on one delay.
    :param jitter: draw each delay uniformly from ``[0, delay]``.
    :param max_event_age: seconds after its first attempt past which an event is not
        retried but dead-lettered (None: no limit; Lambda's MaximumEventAgeInSeconds).
    """

    max_retries: int = attrs.field(default=0, validator=_int_at_least(0))
    initial_delay: float = attrs.field(default=1.0, validator=_seconds(positive=False, optional=False))
    backoff: float = attrs.field(default=2.0)
    max_delay: float = attrs.field(default=60.0, validator=_seconds(positive=False, optional=False))
    jitter: bool = True
    max_event_age: float | None = attrs.field(default=None, validator=_seconds(positive=True, optional=True))

    @backoff.validator
    def _check_backoff(self, attribute: attrs.Attribute[float], value: float) -> None:
        if not is_number(value) or value < 1:
            raise _fail(self, attribute.name, "a number >= 1", value)

    def delay(self, retry: int) -> float:
        """The un-jittered delay before retry number ``retry`` (1-based)."""
        return float(min(self.max_delay, self.initial_delay * self.backoff ** (retry - 1)))


def _to_retries(value: object) -> object:
    if is_int(value):
        if value < 0:  # type: ignore[operator]
            return value  # the validator names the problem
        return Retries(max_retries=value)  # type: ignore[arg-type]
    return value


def _to_triggers(value: object) -> object:
    if isinstance(value, Trigger):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(value)
    return value


@attrs.frozen(kw_only=True)
class FunctionSpec:
    """A declared function and its settings (see ``App.function`` for each field)."""

    name: str = attrs.field()
    fn: Callable[..., Any] = attrs.field(eq=False, repr=False)
    memory_mb: int = attrs.field(default=128, validator=_int_at_least(1))
    timeout: float | None = attrs.field(default=30.0, validator=_seconds(positive=True, optional=True))
    concurrency: int = attrs.field(default=1, validator=_int_at_least(1))
    min_containers: int = attrs.field(default=0, validator=_int_at_least(0))
    max_containers: int | None = attrs.field(default=None, validator=_int_at_least(1, optional=True))
    idle_timeout: float | None = attrs.field(default=60.0, validator=_seconds(positive=False, optional=True))
    init: Callable[[], Any] | None = attrs.field(default=None, eq=False, repr=False)
    retries: Retries = attrs.field(factory=Retries, converter=_to_retries)
    triggers: tuple[Trigger, ...] = attrs.field(default=(), converter=_to_triggers)

    @name.validator
    def _check_name(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not isinstance(value, str) or not NAME_PATTERN.match(value):
            raise ValueError(f"function name must start with a letter or _ and hold only letters, digits, '_', '.' or '-', got {value!r}")

    @fn.validator
    def _check_fn(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not callable(value):
            raise _fail(self, "fn", "callable", value)

    @init.validator
    def _check_init(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not callable(value):
            raise _fail(self, "init", "a callable or None", value)

    @retries.validator
    def _check_retries(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, Retries):
            raise _fail(self, "retries", "an int >= 0 or mf.Retries(...)", value)

    @triggers.validator
    def _check_triggers(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, tuple) or not all(isinstance(t, Trigger) for t in value):
            raise _fail(self, "triggers", "a list of triggers (topic.subscribe(), mf.Every(), ...)", value)

    def __attrs_post_init__(self) -> None:
        if self.max_containers is not None and self.min_containers > self.max_containers:
            raise ValueError(f"{self.name}: min_containers ({self.min_containers}) must not exceed max_containers ({self.max_containers})")

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    @classmethod
    def build(cls, fn: Callable[..., Any], settings: FunctionSettings | dict[str, Any]) -> FunctionSpec:
        """The spec of ``fn`` with ``settings`` (the keywords of ``@app.function``); the name
        defaults to ``fn.__name__``.

        :raises ValueError: an unknown setting (with the names that exist) or a bad value.
        """
        if not callable(fn):
            raise ValueError(f"@app.function must decorate a callable, got {fn!r}")
        known = [field.name for field in attrs.fields(cls) if field.name != "fn"]
        for key in settings:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"unknown function setting {key!r}; {hint}the settings are: {', '.join(known)}")
        values = dict(settings)
        if values.get("name") is None:
            default = getattr(fn, "__name__", "")
            if default == "<lambda>":
                raise ValueError(
                    'a lambda has no name to register it under; pass name=..., e.g. app.function(name="double")(lambda x: 2 * x)'
                )
            if not isinstance(default, str) or not NAME_PATTERN.match(default):
                raise ValueError(f"{fn!r} has no usable name ({default!r}); pass name=... to register it")
            values["name"] = default
        return cls(fn=fn, **values)


class FunctionSettings(TypedDict, total=False):
    """The keywords of ``@app.function`` (and of ``faas.deploy``); ``FunctionSpec`` has their defaults."""

    memory_mb: int
    timeout: float | None
    concurrency: int
    min_containers: int
    max_containers: int | None
    idle_timeout: float | None
    init: Callable[[], Any] | None
    retries: int | Retries
    triggers: Iterable[Trigger]
    name: str | None
