"""The ``--strategies`` argument of ``retain compare``: labels, composition, inline hyperparameters.

Parsing only (no strategy is looked up here), so ``retain compare --help`` can show
:data:`LABEL_GRAMMAR` without importing torch; :func:`retain.runner.plan_labels` binds the
hyperparameters through the same binder as the configs.
"""

from __future__ import annotations

import re
from typing import Any

from retain.errors import ConfigError

__all__ = ["LABEL_GRAMMAR", "format_value", "parse_label", "parse_labels"]

#: The grammar of ``compare --strategies`` (shown in ``retain compare --help``).
LABEL_GRAMMAR = """\
labels    := label ("," label)*
label     := component ("+" component)*       strategies composed in one run
component := name [":" key=value ("," key=value)*]
A "key=value" item after a comma belongs to the component before it, so
ewc:lam=100,fisher=empirical,replay is two labels, and in ewc:lam=100+replay:size=500
lam binds to ewc and size to replay. Values are YAML scalars (100, 1e-3, true, null,
empirical) and contain no ',' or '+' before a letter. Hyperparameters not given come
from the config's entry for that strategy, else the strategy's defaults. A variant is
named by what it changes: ewc (lam=100) in the report, ewc_lam=100/ on disk."""

_PARAM = re.compile(r"\s*[A-Za-z_]\w*\s*=")  # an item that continues the previous component
_COMPOSE = re.compile(r"\+(?=\s*[A-Za-z_])")  # a '+' before a name, not the one in 1e+3


def parse_labels(text: str) -> list[str]:
    """Split ``--strategies`` into labels, as written (grammar: :data:`LABEL_GRAMMAR`)."""
    labels: list[str] = []
    for item in text.split(","):
        if not item.strip():
            continue
        if _PARAM.match(item):
            if not labels or ":" not in _COMPOSE.split(labels[-1])[-1]:
                raise ConfigError(
                    f"--strategies: '{item.strip()}' is a hyperparameter without a strategy; "
                    f"write it after a strategy and ':', e.g. "
                    f"{labels[-1] if labels else 'ewc'}:{item.strip()}"
                )
            labels[-1] += "," + item.strip()
        else:
            labels.append(item.strip())
    if not labels:
        raise ConfigError("--strategies is empty; give a comma-separated list, e.g. finetune,joint")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--strategies lists a strategy twice: {text}")
    return labels


def parse_label(label: str) -> list[tuple[str, dict[str, Any]]]:
    """``"ewc:lam=100+replay"`` -> ``[("ewc", {"lam": 100}), ("replay", {})]``."""
    import yaml

    parts = []
    for part in _COMPOSE.split(label):
        name, colon, rest = part.partition(":")
        name = name.strip()
        if not name:
            raise ConfigError(f"--strategies: '{label}' has a '+' or ':' without a strategy name")
        params: dict[str, Any] = {}
        for item in rest.split(",") if colon else []:
            key, eq, text = (t.strip() for t in item.partition("="))
            if not eq or not key.isidentifier() or not text:
                raise ConfigError(
                    f"--strategies: '{item.strip()}' in '{label}' is not key=value "
                    f"(e.g. {name}:lam=100)"
                )
            if key in params:
                raise ConfigError(f"--strategies: '{label}' sets {name}'s '{key}' twice")
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                value = text
            if isinstance(value, (dict, list)):
                raise ConfigError(f"--strategies: {key}={text} in '{label}' is not a scalar")
            params[key] = value
        parts.append((name, params))
    return parts


def format_value(v: Any) -> str:
    """How a hyperparameter value reads in a variant's name: ``100``, ``0.001``, ``true``."""
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    return f"{v:g}" if isinstance(v, float) else str(v)
