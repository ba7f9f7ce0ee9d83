"""attrs validators for settings records: a bad value raises ``ValueError`` naming the owner and the field.

Every message reads ``"<owner>: <field> must be <expectation>, got <value!r>"``, as in
``"LocalNodes: max_nodes must be a positive int, got 0"``. The owner is the record's
type name by default; records that carry a name of their own (``FunctionSpec``) pass
``owner=name_or_type`` so the message names the function.

This module is the bottom of the house: it imports nothing of microfaas's, so every
layer's records (``spec``, ``keepalive``, ``pool``, ``ray``, ``sim``) validate the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

__all__ = [
    "Validator",
    "at_least",
    "check",
    "int_at_least",
    "is_int",
    "is_number",
    "name_or_type",
    "number_at_least",
    "positive_int",
    "seconds",
    "type_name",
]

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def type_name(instance: object) -> str:
    """The owner a message names by default: the record's type (``"LocalNodes"``)."""
    return type(instance).__name__


def name_or_type(instance: object) -> str:
    """The record's ``name`` when it has one (a function's), else its type name."""
    return getattr(instance, "name", None) or type(instance).__name__


def is_int(value: object) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An int or a float that is not a bool (NaN included: compare it to reject it)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def check(expectation: str, ok: Callable[[Any], bool], *, optional: bool = False, owner: Callable[[object], str] = type_name) -> Validator:
    """A validator that accepts a value when ``ok(value)`` holds.

    :param expectation: what the value must be, as the message says it (``"an int >= 1"``).
    :param ok: the test; a ``TypeError`` it raises (comparing a str to a number) is a rejection.
    :param optional: also accept None (say so in ``expectation``).
    :param owner: names the record in the message.
    """

    def validate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        try:
            accepted = ok(value)
        except TypeError:
            accepted = False
        if not accepted:
            raise ValueError(f"{owner(instance)}: {attribute.name} must be {expectation}, got {value!r}")

    return validate


def _or_none(optional: bool) -> str:
    return " or None" if optional else ""


def int_at_least(minimum: int, *, optional: bool = False, owner: Callable[[object], str] = type_name) -> Validator:
    """An int (not a bool) ``>= minimum``: ``"an int >= 0"``."""
    return check(f"an int >= {minimum}{_or_none(optional)}", lambda v: is_int(v) and v >= minimum, optional=optional, owner=owner)


def positive_int(*, optional: bool = False) -> Validator:
    """An int (not a bool) ``>= 1``: ``"a positive int"``."""
    return check(f"a positive int{_or_none(optional)}", lambda v: is_int(v) and v >= 1, optional=optional)


def number_at_least(minimum: float) -> Validator:
    """An int or float (not a bool, not NaN) ``>= minimum``: ``"a number >= 0"``."""
    return check(f"a number >= {minimum}", lambda v: is_number(v) and v >= minimum)


def seconds(*, positive: bool, optional: bool, owner: Callable[[object], str] = type_name) -> Validator:
    """A duration: a number (not a bool, not NaN) ``> 0`` when ``positive``, else ``>= 0``."""
    expectation = ("a number > 0" if positive else "a number >= 0") + " (seconds)" + _or_none(optional)
    return check(expectation, lambda v: is_number(v) and (v > 0 if positive else v >= 0), optional=optional, owner=owner)


def at_least(low: float, *, unit: str = "", optional: bool = False) -> Validator:
    """A value ``>= low`` (no type check: for fields a converter has made numbers): ``">= 0 seconds"``."""
    return check(f">= {low}{unit}", lambda v: v >= low, optional=optional)
