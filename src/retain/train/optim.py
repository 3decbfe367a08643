"""Optimizers and learning-rate schedules.

Schedules are plain functions of the step, applied by setting each parameter group's ``lr`` to
``base_lr * factor(step)`` before the optimizer step. Their whole state is one integer, which
makes checkpoints trivial and ``schedule_scope: run`` (one schedule over all tasks) possible.

WSD (warmup-stable-decay; Hu et al., "MiniCPM", 2024): a linear warmup, a long stable phase at the peak rate, and a
final linear decay over the last ``decay`` fraction of steps. Checkpoints taken in the stable
phase keep full plasticity; each can be annealed on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from retain.config import TrainConfig


@dataclass(frozen=True)
class Schedule:
    """Learning-rate factor in [min_lr, 1] as a function of the step within ``total`` steps."""

    kind: str
    total: int
    warmup: float = 0.0
    decay: float = 0.1
    min_lr: float = 0.0

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup * self.total)) if self.warmup < 1 else int(self.warmup)

    def factor(self, step: int) -> float:
        """Factor for the optimizer step with index ``step`` (0-based)."""
        w = self.warmup_steps
        if w > 0 and step < w:
            return (step + 1) / w
        if self.kind == "constant":
            return 1.0
        total = max(self.total, 1)
        lo = self.min_lr
        if self.kind == "cosine":
            t = min(max(step - w, 0) / max(total - w, 1), 1.0)
            return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))
        if self.kind == "linear":
            t = min(max(step - w, 0) / max(total - w, 1), 1.0)
            return lo + (1 - lo) * (1 - t)
        if self.kind == "wsd":
            d = int(round(self.decay * total))
            start = total - d
            if step < start or d == 0:
                return 1.0
            t = min((step - start + 1) / d, 1.0)
            return lo + (1 - lo) * (1 - t)
        raise ValueError(f"unknown schedule {self.kind!r}")

    @classmethod
    def from_config(cls, cfg: TrainConfig, total: int) -> Schedule:
        return cls(cfg.schedule, total, cfg.warmup, cfg.decay, cfg.min_lr)


def steps_for(n_samples: int, cfg: TrainConfig, world_size: int = 1) -> int:
    """Optimizer steps one task of ``n_samples`` takes under ``cfg``."""
    if cfg.steps is not None:
        return cfg.steps
    per_rank = n_samples // world_size if world_size > 1 else n_samples
    batches = math.ceil(per_rank / cfg.batch_size)
    return cfg.epochs * max(1, math.ceil(batches / cfg.grad_accum))


def default_groups(model: nn.Module) -> list[dict[str, Any]]:
    """One group of all trainable parameters, with names so strategies can regroup them."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for _, p in named], "names": [n for n, _ in named], "lr_scale": 1.0}]


def build_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD, Adam or AdamW over ``groups``; each group's ``base_lr`` is ``lr * lr_scale``."""
    torch_groups = []
    for g in groups:
        if not g["params"]:
            continue
        base = cfg.lr * float(g.get("lr_scale", 1.0))
        torch_groups.append(
            {
                "params": list(g["params"]),
                "lr": base,
                "base_lr": base,
                "names": list(g.get("names", [])),
            }
        )
    if not torch_groups:
        raise ValueError("no trainable parameters: every parameter is frozen")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            torch_groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(torch_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(torch_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def carry_state(old: torch.optim.Optimizer, new: torch.optim.Optimizer) -> None:
    """Copy per-parameter state (moments, step counts) from ``old`` to ``new`` where the same
    parameter object appears in both: the 'keep' policy when the set of parameters changed."""
    for group in new.param_groups:
        for p in group["params"]:
            if p in old.state:
                new.state[p] = old.state[p]


def load_state_by_name(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Restore per-parameter state saved by :func:`retain.utils.checkpoint.optimizer_state`,
    matching parameters by name: the set of trainable parameters may differ from the one that was
    saved (a strategy froze layers or added a column since), which makes positions meaningless.
    The resumed optimizer ends up as the uninterrupted run's :func:`carry_state` would leave it."""
    by_name: dict[str, dict[str, Any]] = {}
    for g in saved["param_groups"]:
        for idx, name in zip(g["params"], g.get("names", [])):
            if idx in saved["state"]:
                by_name[name] = saved["state"][idx]
    for g in optimizer.param_groups:
        for p, name in zip(g["params"], g.get("names", [])):
            st = by_name.get(name)
            if st is None:
                continue
            shapes_fit = all(
                v.shape == p.shape
                for k, v in st.items()
                if isinstance(v, torch.Tensor) and v.dim() > 0
            )
            if shapes_fit:
                optimizer.state[p] = {
                    k: v.to(p.device) if isinstance(v, torch.Tensor) and v.dim() > 0 else v
                    for k, v in st.items()
                }


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor
