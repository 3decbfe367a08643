"""Strategy registry.

Every module in this package is imported on first use, and its ``@register``-ed classes become
available by name; import errors are not swallowed. Third-party packages register strategies
through the ``retain.strategies`` entry-point group (the entry point loads a module whose import
registers them). Named parameterisations live in ``presets/*.yaml`` (``{preset: ewc-online}``).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import yaml

from retain.binding import field_hints, from_dict, type_name
from retain.errors import ConfigError, did_you_mean
from retain.strategies.base import Strategy

__all__ = ["Strategy", "register", "get", "available", "build", "build_all", "presets"]

_REGISTRY: dict[str, type[Strategy]] = {}
_LOADED = False
_PRESETS = Path(__file__).parent / "presets"

S = TypeVar("S", bound=type)


def register(name: str, reference_url: str | None = None) -> Callable[[S], S]:
    """Class decorator: register a :class:`Strategy` subclass under ``name`` (lowercase)."""
    if name != name.lower() or not name.replace("_", "").isalnum():
        raise ValueError(f"strategy names are lowercase letters, digits and '_', got {name!r}")

    def deco(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise TypeError(f"@register('{name}') must decorate a Strategy subclass")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"strategy name '{name}' is already registered by {_REGISTRY[name]}")
        if not dataclasses.is_dataclass(cls) or "__dataclass_fields__" not in cls.__dict__:
            cls = dataclasses.dataclass(cls, repr=False)  # type: ignore[assignment]
        # A subclass decorated with @dataclass gets a generated repr listing every field; the
        # base repr shows only what differs from the defaults (the config a user would write).
        cls.__repr__ = Strategy.__repr__  # type: ignore[method-assign]
        cls.name = name  # type: ignore[attr-defined]
        if reference_url is not None:
            cls.reference_url = reference_url  # type: ignore[attr-defined]
        _REGISTRY[name] = cls  # type: ignore[assignment]
        return cls

    return deco


def _load() -> None:
    global _LOADED  # noqa: PLW0603  (import the strategy modules once, on first use)
    if _LOADED:
        return
    _LOADED = True
    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in ("base",) and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    for ep in metadata.entry_points(group="retain.strategies"):
        ep.load()


def available() -> list[str]:
    """Names of all registered strategies, sorted."""
    _load()
    return sorted(_REGISTRY)


def get(name: str) -> type[Strategy]:
    _load()
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown strategy '{name}'{did_you_mean(name, list(_REGISTRY))}; "
            "`retain strategies` lists them"
        )
    return _REGISTRY[name]


def presets() -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted(_PRESETS.glob("*.yaml")):
        out[p.stem] = yaml.safe_load(p.read_text()) or {}
    return out


def build(spec: dict[str, Any] | str | Strategy, where: str = "strategies") -> Strategy:
    """Instantiate a strategy from ``{name: ..., **hparams}``, ``{preset: ...}`` or a name.

    The hyperparameters are bound by :func:`retain.binding.from_dict`, as the run configuration.
    """
    if isinstance(spec, Strategy):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    if "preset" in spec:
        pname = spec.pop("preset")
        table = presets()
        if pname not in table:
            raise ConfigError(f"unknown preset '{pname}'{did_you_mean(str(pname), list(table))}")
        spec = {**table[pname], **spec}
    name = spec.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(f"{where}: a strategy needs a name, got {name!r}")
    cls = get(name)
    fields = [f.name for f in cls.hparam_fields()]

    def unknown(key: str) -> str:
        return (
            f"unknown hyperparameter '{key}' for strategy '{name}'{did_you_mean(key, fields)}; "
            f"it takes: {', '.join(fields) or 'none'}"
        )

    try:
        return from_dict(cls, spec, f"{where}.{name}", names=fields, unknown=unknown)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: strategy '{name}': {e}") from None


def build_all(specs: list[Any]) -> list[Strategy]:
    from retain.strategies.joint import Joint

    strategies = [build(s, f"strategies.{i}") for i, s in enumerate(specs)]
    if any(isinstance(s, Joint) for s in strategies) and len(strategies) > 1:
        raise ConfigError(
            "'joint' trains one fresh model on all tasks at once and cannot be combined with "
            "other strategies; compare them side by side with `retain compare` instead"
        )
    return strategies


def label(strategies: list[Strategy]) -> str:
    """``"ewc+replay"``: how a composed run is named."""
    return "+".join(s.name for s in strategies)


def _arg_docs(cls: type) -> dict[str, str]:
    """Per-field help from the ``Args:`` section of a Google-style class docstring."""
    import inspect

    doc = inspect.getdoc(cls) or ""
    out: dict[str, str] = {}
    in_args, current = False, None
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Hyperparameters:"):
            in_args = True
            continue
        if in_args:
            if line and not line.startswith(" "):
                break
            stripped = line.strip()
            if ":" in stripped and line.startswith("    ") and not line.startswith("     "):
                current, text = stripped.split(":", 1)
                out[current.strip()] = text.strip()
            elif current and stripped:
                out[current] += " " + stripped
    return out


def describe_all(markdown: bool = False) -> str:
    """Every registered strategy: summary, hyperparameters with defaults, reference."""
    lines: list[str] = []
    for name in available():
        cls = get(name)
        docs = _arg_docs(cls)
        hints = field_hints(cls)
        if markdown:
            lines.append(f"### `{name}`\n\n{cls.summary()}\n")
        else:
            lines.append(f"{name}: {cls.summary()}")
        for f in cls.hparam_fields():
            default = (
                f.default
                if f.default is not dataclasses.MISSING
                else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            )
            tp = type_name(hints[f.name])
            helptext = docs.get(f.name, "")
            if markdown:
                lines.append(f"- `{f.name}` ({tp}, default `{default!r}`): {helptext}")
            else:
                lines.append(
                    f"    {f.name}: {tp} = {default!r}" + (f"  {helptext}" if helptext else "")
                )
        if not cls.hparam_fields():
            lines.append("- no hyperparameters" if markdown else "    (no hyperparameters)")
        if cls.reference_url:
            lines.append(
                f"\n  reference: {cls.reference_url}"
                if markdown
                else f"    reference: {cls.reference_url}"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
