"""Type checks of option values, done once where every config dataclass is built.

A value of the wrong type otherwise travels on until something deep inside fails on it (`'<' not supported
between 'str' and 'int'`, torch's `empty(): argument 'size'`) or, worse, until it silently changes a result (a
NaN loss weight). `check_field_types` checks each field against its annotation: integers are integers (not
bools, not 2.5), numbers are finite, flags are bools, texts are strings, a `Literal[...]` option is one of its
choices; NumPy scalars are accepted and turned into Python ones. Ranges and checks across fields stay with each
config, which knows them.
"""

from __future__ import annotations

import functools
import math
import numbers
import types
import typing
from dataclasses import fields
from typing import Any


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _members(hint) -> tuple | None:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return None


def _describe(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def describe_type(hint) -> str:
    """An annotation as a user reads it: `int`, `float | None`, `list[int]`, choices as `a | b | c`."""
    members = _members(hint)
    if members is not None:
        return " | ".join(describe_type(m) for m in members)
    if hint is type(None):
        return "None"
    if typing.get_origin(hint) is typing.Literal:
        return " | ".join(map(str, typing.get_args(hint)))
    if typing.get_origin(hint) is not None:
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))


def checked_value(value, hint, name: str):
    """`value` as the type `hint` names (int, float, bool, str, `Literal[...]` choices, their unions with None,
    lists of them), or a ValueError naming the option; values of other annotations are returned unchecked."""
    members = _members(hint)
    if members is not None:
        if value is None and type(None) in members:
            return None
        errors = []
        for member in (m for m in members if m is not type(None)):
            try:
                return checked_value(value, member, name)
            except ValueError as error:
                errors.append(error)
        if len(errors) == 1:  # X | None: X's own message says more
            raise errors[0]
        wanted = " or ".join(describe_type(m) for m in members)
        raise ValueError(f"{name} must be {wanted}, got {_describe(value)}")
    origin = typing.get_origin(hint) or hint
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if any(value == choice and type(value) is type(choice) for choice in choices):
            return value
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool) or type(value).__name__ == "bool_":
            return bool(value)
        raise ValueError(f"{name} must be true or false, got {_describe(value)}")
    if hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_":
            return int(value)
        raise ValueError(f"{name} must be an integer, got {_describe(value)}")
    if hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_":
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            return float(value)
        raise ValueError(f"{name} must be a number, got {_describe(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{name} must be a string, got {_describe(value)}")
    if origin in (list, tuple) and typing.get_args(hint):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {_describe(value)}")
        item = typing.get_args(hint)[0]
        checked = [checked_value(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(checked) if origin is tuple else checked
    if origin is dict:
        if not isinstance(value, typing.Mapping):
            raise ValueError(f"{name} must be a mapping, got {_describe(value)}")
    return value


def check_field_types(instance, prefix: str = "") -> None:
    """Check (and normalise: NumPy scalars to Python ones) every field of the dataclass `instance`."""
    hints = _hints(type(instance))
    for f in fields(instance):
        value = getattr(instance, f.name)
        checked = checked_value(value, hints[f.name], f"{prefix}{f.name}")
        if checked is not value:
            object.__setattr__(instance, f.name, checked)  # frozen dataclasses too


def load_json(text: str):
    """`json.loads`, with nesting too deep for the parser (a few kilobytes of `[`) a ValueError like any other bad
    JSON, not a RecursionError."""
    import json

    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def with_current_names(given: dict, renamed: dict[str, str], what: str) -> dict:
    """`given` (a mapping of a config's fields) with the fields' former names (`renamed`, old -> new) replaced by
    today's, so that run configs and saved models written before a rename still load; both names at once is an
    error that names them."""
    given = dict(given)
    for old, new in renamed.items():
        if old in given:
            if new in given:
                raise ValueError(f"{what}: {old!r} is the former name of {new!r}; give one of them")
            given[new] = given.pop(old)
    return given
