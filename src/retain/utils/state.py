"""Split nested state into tensors (for safetensors) and a JSON skeleton, and back.

Optimizer states, strategy states (Fisher, anchors, buffers) and RNG states are nested dicts and
lists of tensors and plain values. ``flatten`` replaces every tensor by a reference and returns the
tensors separately; ``unflatten`` puts them back. Nothing is ever pickled: a run directory can be
read without importing the code that wrote it, and loading it cannot run code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from retain.utils.files import write_atomic


def flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """Return a JSON-able skeleton of ``obj``; tensors go into ``tensors`` under fresh keys."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}.{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError("object arrays cannot be saved without pickle")
        key = f"{prefix}.{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj)).clone()
        return {"__ndarray__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: flatten(v, tensors, prefix) for k, v in obj.items()}
        return {
            "__dict__": [
                [flatten(k, tensors, prefix), flatten(v, tensors, prefix)] for k, v in obj.items()
            ]
        }
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [flatten(v, tensors, prefix) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return flatten(obj.item(), tensors, prefix)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(
        f"cannot save a {type(obj).__name__} in a checkpoint: state must be tensors, numbers, "
        "strings, lists and dicts"
    )


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__tuple__" in obj:
            return tuple(unflatten(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {unflatten(k, tensors): unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__float__" in obj:
            return float(obj["__float__"])
        return {k: unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def _to_dict(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def write_json(path: str | Path, obj: Any) -> None:
    """Write strict JSON (no NaN or infinity, which other readers reject) atomically; objects
    with a ``to_dict()`` (run records) are written as what it returns."""
    write_atomic(path, json.dumps(obj, indent=1, allow_nan=False, default=_to_dict))


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp)))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def save_state(path: str | Path, obj: Any) -> Any:
    """Save ``obj``'s tensors to ``path`` (safetensors); return the JSON skeleton."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(obj, tensors)
    save_tensors(path, tensors)
    return skeleton


def load_state(path: str | Path, skeleton: Any) -> Any:
    return unflatten(skeleton, load_tensors(path))


def rng_state() -> dict[str, Any]:
    import random

    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [
            v.astype(np.int64) if isinstance(v, np.ndarray) else v for v in np.random.get_state()
        ],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
