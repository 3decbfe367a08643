"""Will the model fit? Its parameters are counted before any weight is allocated.

A model too large for the machine would otherwise fail deep inside the allocator (a
``RuntimeError`` naming 40000000000 bytes) or, worse, start swapping. The count comes from a
build on PyTorch's ``meta`` device (shapes only, no memory, no random numbers drawn), or from the
headers of a pretrained model's safetensors files. Training needs the weights, their gradients
and the optimizer's state: that lower bound is compared with the memory the system says is
available, and a run that cannot fit is refused in one line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from retain.errors import ConfigError

if TYPE_CHECKING:
    from retain.config import RunConfig
    from retain.data.stream import Stream

# Strategies that train only a small part of the model: the base gets no gradient or optimizer
# state, so the weights alone are the bound.
_FROZEN_BASE = {"lora", "olora", "freeze"}


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (``MemAvailable``), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def count_parameters(cfg: RunConfig, stream: Stream) -> tuple[int, int] | None:
    """``(parameters, bytes per parameter)`` of the model ``cfg.model`` builds for ``stream``,
    without allocating it; None when it cannot be known cheaply (a GGUF file)."""
    m = cfg.model
    size = 4  # retain's own models are float32
    if m.name == "hf":
        from retain.utils.hf import DTYPES

        size = DTYPES[m.dtype].itemsize
        if m.gguf_file:
            return None
        if m.pretrained:
            n = _safetensors_count(Path(m.pretrained).expanduser())
            return None if n is None else (n, size)
    from retain.models import build_model

    with torch.device("meta"):
        model = build_model(m, stream)
    return sum(p.numel() for p in model.parameters()), size


def _safetensors_count(folder: Path) -> int | None:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    n = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            n += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118
    return n


def training_bytes(cfg: RunConfig, params: int, size: int) -> tuple[int, str]:
    """A lower bound on the memory training takes, and what it counts."""
    names = {s.get("name") if isinstance(s, dict) else s for s in cfg.strategies}
    if names & _FROZEN_BASE:
        return params * size, "the frozen weights"
    slots = {"adam": 2, "adamw": 2}.get(cfg.train.optimizer, 1 if cfg.train.momentum else 0)
    what = "weights and gradients" + (" and the optimizer's state" if slots else "")
    return params * size * (2 + slots), what


def check_fits(cfg: RunConfig, stream: Stream, available: int | None = None) -> None:
    """Refuse a model whose training cannot fit in the available memory, in one line."""
    available = available_memory() if available is None else available
    if available is None:
        return
    counted = count_parameters(cfg, stream)
    if counted is None:
        return
    params, size = counted
    need, what = training_bytes(cfg, params, size)
    if need > available:
        raise ConfigError(
            f"the model has {_human(params)} parameters: training it takes at least "
            f"{_gb(need)} ({what}), but this machine has {_gb(available)} of memory available; "
            f"make it smaller ({_knob(cfg)}) or run on a machine with more memory"
        )


def _knob(cfg: Any) -> str:
    return {"mlp": "model.hidden", "cnn": "model.channels"}.get(cfg.model.name, "model.hf_config")


def _human(n: int) -> str:
    for unit, scale in (("billion", 1e9), ("million", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return str(n)


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"
