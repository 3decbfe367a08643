"""retain: train a neural network on new data without losing what it already knows, and measure
exactly what was lost.

Public API (imported lazily, so ``import retain`` and ``retain --help`` stay fast)::

    from retain import run, Stream, Task, TensorData, RunConfig, TrainConfig, get_strategy
    from retain import split, permuted, rotated, iid, prior_shift, by_column, from_sources
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "run": "retain.api",
    "RunResult": "retain.report.result",
    "RunRecord": "retain.report.record",
    "CompareRecord": "retain.report.record",
    "load_record": "retain.report.record",
    "Stream": "retain.data.stream",
    "Task": "retain.data.stream",
    "TensorData": "retain.data.stream",
    "Source": "retain.data.sources",
    "from_arrays": "retain.data.sources",
    "from_torch": "retain.data.sources",
    "as_source": "retain.data.sources",
    "split": "retain.data.scenarios",
    "permuted": "retain.data.scenarios",
    "rotated": "retain.data.scenarios",
    "iid": "retain.data.scenarios",
    "prior_shift": "retain.data.scenarios",
    "by_column": "retain.data.scenarios",
    "from_sources": "retain.data.scenarios",
    "load_builtin": "retain.data.builtin",
    "load_dataset": "retain.data.builtin",
    "RunConfig": "retain.config",
    "TrainConfig": "retain.config",
    "EvalConfig": "retain.config",
    "StreamConfig": "retain.config",
    "ModelConfig": "retain.config",
    "load_config": "retain.config",
    "Strategy": "retain.strategies.base",
    "register": "retain.strategies",
    "MLP": "retain.models",
    "SmallCNN": "retain.models",
    "metrics": "retain.eval.metrics",
}


def get_strategy(name: str) -> Any:
    """The registered strategy class called ``name``."""
    from retain.strategies import get

    return get(name)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        mod = importlib.import_module(_EXPORTS[name])
        return mod if name == "metrics" else getattr(mod, name)
    raise AttributeError(f"module 'retain' has no attribute {name!r}")


__all__ = [*_EXPORTS, "get_strategy", "__version__"]  # noqa: PLE0604, PLE0605
