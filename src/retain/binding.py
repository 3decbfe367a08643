"""Bind plain data (YAML, dotted overrides) to dataclasses, and check a dataclass's fields.

One binder serves the run configuration and the strategies' hyperparameters alike:

* :func:`from_dict` builds a dataclass from a mapping: an unknown key is an error with a "did you
  mean" suggestion, and every value is checked against the field's annotation (``int``,
  ``float``, ``bool``, ``str``, ``Literal``, ``list[...]``, ``dict``, unions, nested dataclasses).
* :func:`check_fields` checks an instance, however it was made (YAML or Python): every value
  against its annotation, every float finite (NaN and infinity are refused everywhere), and the
  bounds declared in the field's metadata: ``field(default=0.5, metadata={"ge": 0, "lt": 1})``.
  A dataclass calls it from ``__post_init__``; checks that relate two fields stay in code.

This module imports no torch, so the command line answers ``--help`` quickly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

import yaml

from retain.errors import ConfigError, did_you_mean

__all__ = [
    "BOUNDS",
    "bounds_text",
    "check_fields",
    "coerce",
    "field_hints",
    "from_dict",
    "help_field",
    "type_name",
]

#: Bound keys a field's metadata may hold, with the comparison each one requires.
BOUNDS: dict[str, tuple[str, Callable[[Any, Any], bool]]] = {
    "ge": (">=", lambda v, b: v >= b),
    "gt": (">", lambda v, b: v > b),
    "le": ("<=", lambda v, b: v <= b),
    "lt": ("<", lambda v, b: v < b),
}


def type_name(tp: Any) -> str:
    """How an annotation reads in an error message or in ``--help``.

    Examples:
        >>> type_name(int | None)
        'int or null'
    """
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        return f"a list of {type_name(arg)}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it (converted where lossless).

    Raises :class:`ConfigError` naming ``where``; ``TypeError`` for an annotation the binder does
    not know (a bug in the dataclass, not in the user's input).
    """
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else from_dict(tp, value, where)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where} must be {type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = did_you_mean(str(value), [str(c) for c in choices])
            raise ConfigError(
                f"{where} must be one of {', '.join(map(str, choices))}; got {value!r}{hint}"
            )
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be {type_name(tp)}, got {value!r}")
        (arg,) = typing.get_args(tp) or (Any,)
        return [coerce(arg, v, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            # A float stands for an integer only where it holds one exactly (below 2^53).
            if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
                return int(value)
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")


@functools.cache
def field_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass's fields (cached per class)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(
    cls: type,
    data: Any,
    where: str = "",
    *,
    names: list[str] | None = None,
    unknown: Callable[[str], str] | None = None,
) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    ``names`` limits the keys that may be set (default: every field); ``unknown(key)`` words the
    error for any other key (default: ``unknown key 'where.key' (did you mean ...)``). A class with
    a ``bind(data, where)`` classmethod binds itself (a stream's scenario options).

    Examples:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Opt:
        ...     lr: float = 0.1
        >>> from_dict(Opt, {"lr": 1})
        Opt(lr=1.0)
        >>> from_dict(Opt, {"lr_": 1}, "train")
        Traceback (most recent call last):
        retain.errors.ConfigError: unknown key 'train.lr_' (did you mean 'lr'?)
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {data!r}")
    if "bind" in vars(cls):
        return cls.bind(data, where)
    hints = field_hints(cls)
    names = list(hints) if names is None else names
    kwargs = {}
    for key, value in data.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(
                unknown(str(key))
                if unknown
                else f"unknown key '{full}'{did_you_mean(str(key), names)}"
            )
        kwargs[key] = coerce(hints[key], value, full)
    return cls(**kwargs)


def help_field(
    text: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    **kw: Any,
) -> Any:
    """A dataclass field with its ``--help`` text and bounds (checked by :func:`check_fields`).

    Examples:
        >>> help_field("epochs per task", default=1, ge=1).metadata["ge"]
        1
    """
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return dataclasses.field(metadata={"help": text, **bounds}, **kw)


def bounds_text(meta: Any) -> str:
    """``"in [0, 1)"``, ``">= 1"``: the bounds of a field's metadata, as a user reads them."""
    lo = next(((k, meta[k]) for k in ("ge", "gt") if k in meta), None)
    hi = next(((k, meta[k]) for k in ("le", "lt") if k in meta), None)
    if lo and hi:
        return (
            f"in {'[' if lo[0] == 'ge' else '('}{_num(lo[1])}, {_num(hi[1])}"
            f"{']' if hi[0] == 'le' else ')'}"
        )
    return " and ".join(f"{BOUNDS[b[0]][0]} {_num(b[1])}" for b in (lo, hi) if b)


def _num(bound: float) -> str:
    """An integer bound in full (a seed's 4294967295, not 4.29497e+09), others as ``:g``."""
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _numbers(value: Any) -> list[float | int]:
    """The numbers in a value (nested lists included), bools left out."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _numbers(v)]
    return []


def check_fields(obj: Any, where: str = "", error: type[Exception] = ConfigError) -> None:
    """Check every field of dataclass ``obj``: its type, finite floats, and metadata bounds.

    ``where`` prefixes the field names in messages (``"train"`` gives ``train.lr``); bounds
    apply to each number of a list field. Raises ``error`` with one line naming the field.

    Examples:
        >>> from dataclasses import dataclass, field
        >>> @dataclass
        ... class Opt:
        ...     ratio: float = field(default=0.5, metadata={"ge": 0, "lt": 1})
        >>> check_fields(Opt(ratio=1.0), "replay")
        Traceback (most recent call last):
        retain.errors.ConfigError: replay.ratio must be in [0, 1), got 1.0
    """
    try:
        hints = field_hints(type(obj))
    except NameError:  # an annotation only importable for type checkers: check bounds only
        hints = {}
    for f in dataclasses.fields(obj):
        if f.name.endswith("_") or f.name.startswith("_"):
            continue  # learned state, not a setting
        name = f"{where}.{f.name}" if where else f.name
        value = getattr(obj, f.name)
        try:
            if f.name in hints and not dataclasses.is_dataclass(hints[f.name]):
                coerce(hints[f.name], value, name)
        except TypeError:
            pass  # an annotation the binder does not know: left to the class
        except ConfigError as e:
            raise error(str(e)) from None
        for x in _numbers(value):
            if isinstance(x, float) and not math.isfinite(x):
                raise error(f"{name} must be a finite number, got {value!r}")
            failed = [
                k for k, (_, ok) in BOUNDS.items() if k in f.metadata and not ok(x, f.metadata[k])
            ]
            if failed:
                raise error(f"{name} must be {bounds_text(f.metadata)}, got {value!r}")
            if isinstance(x, int) and abs(x) >= 2**63:  # no count or size is this large
                raise error(f"{name} is out of range ({x}); give a number below 2^63")


# Reading YAML strictly: PyYAML keeps the last of two equal keys without a word, so a config that
# sets lr twice (one edit forgotten above another) would train with whichever comes last.


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping holds the same key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if repeated:
                where = f"lines {seen[key]} and {line}" if seen[key] != line else f"line {line}"
                raise DuplicateKeyError(
                    None,
                    None,
                    f"key '{key}' is given twice ({where}); keep one",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_unique(text: str) -> Any:
    """``yaml.safe_load`` that refuses a key repeated within one mapping."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  (a SafeLoader subclass)
