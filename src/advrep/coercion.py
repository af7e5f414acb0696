"""Typed values from YAML and the command line: the dataclass builder every config section,
method and term uses.

:func:`build` instantiates a dataclass from a mapping, rejecting unknown keys (with the likely
intended key) and converting each value to its annotation with :func:`coerce`, which raises a
one-line :class:`~advrep.errors.ConfigError` naming the key and the valid values. This module
sits at the bottom of the package (it imports only the errors and the registry's suggestion
helper), so methods, attacks and the config itself can all use it without import cycles.
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal, Union

from .errors import ConfigError
from .registry import suggest

@dataclass(frozen=True)
class Range:
    """A field's valid interval, read from its annotation (``Annotated[float, Range(0, 1)]``):
    a value outside it is an error naming the key, the interval and what the field means."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    why: str = ""

    def text(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"

    def check(self, value, key: str) -> None:
        below = self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo))
        above = self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi))
        if below or above:
            raise ConfigError(f"bad value {value!r} for '{key}': must be {self.text()}"
                              + (f" ({self.why})" if self.why else ""))


def positive(why: str = "") -> Range:
    return Range(0, lo_open=True, why=why)


def at_least(lo: float, why: str = "") -> Range:
    return Range(lo, why=why)


PositiveInt = Annotated[int, at_least(1)]
NonNegativeInt = Annotated[int, at_least(0)]
PositiveFloat = Annotated[float, positive()]
NonNegativeFloat = Annotated[float, at_least(0)]
Fraction = Annotated[float, Range(0, 1)]


_FRACTION = re.compile(r"^\s*([-+]?[\d.eE+-]+)\s*/\s*([\d.eE+-]+)\s*$")


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _type_name(typing.get_args(tp)[0])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp, key: str) -> Any:
    """Convert a YAML or command-line value to the annotated type, or raise ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        out = coerce(value, args[0], key)
        for rule in args[1:]:
            if isinstance(rule, Range):
                rule.check(out, key)
        return out
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        if isinstance(value, bool) and ("on" if value else "off") in args:
            return "on" if value else "off"  # YAML 1.1 reads on/off (and yes/no) as booleans
        if value in args:
            return value
        raise ConfigError(f"bad value {value!r} for '{key}'{suggest(value, map(str, args))}; "
                          f"valid values: {', '.join(map(str, args))}")
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        item = args[0] if args else Any
        return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"bad value {value!r} for '{key}': expected a mapping")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        out = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out = float(value)
        elif isinstance(value, str):
            m = _FRACTION.match(value)
            try:
                out = float(m.group(1)) / float(m.group(2)) if m else float(value)
            except (ValueError, ZeroDivisionError):
                pass
        if out is not None:
            if not math.isfinite(out):
                raise ConfigError(f"bad value {value!r} for '{key}': expected a finite number")
            return out
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"bad value {value!r} for '{key}': expected {_type_name(tp)}")


def build(cls, values: dict, where: str, defaults=None):
    """Instantiate dataclass ``cls`` from a mapping, rejecting unknown keys and bad values.

    ``defaults`` (an instance) supplies the fields not in ``values``.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"'{where}' must be a mapping of keys to values, got {values!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in fields(cls)]
    for key in values:
        if key not in hints:
            raise ConfigError(f"unknown config key '{_join(where, key)}'{suggest(key, names)}; "
                              f"valid keys{' in ' + repr(where) if where else ''}: {', '.join(names)}")
    kwargs = {}
    for f in fields(cls):
        if f.name in values:
            kwargs[f.name] = coerce(values[f.name], hints[f.name], _join(where, f.name))
        elif defaults is not None:
            kwargs[f.name] = getattr(defaults, f.name)
    return cls(**kwargs)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key
