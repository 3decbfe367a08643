"""``fit_task``: the single inner training loop, on Hugging Face Accelerate.

It owns zero_grad, backward, gradient accumulation, clipping, the learning-rate schedule and the
optimizer step; strategies change the batch and the loss through their hooks and may edit
gradients in ``after_backward``. Hooks nobody implements are never called, so an unused hook costs
nothing per step. The loss is read back from the device only every ``LOG_EVERY`` steps: reading it
every step would synchronise a GPU on each batch.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from retain.errors import RetainError
from retain.objectives import task_known
from retain.strategies.base import overrides
from retain.train.optim import Schedule, set_lr

if TYPE_CHECKING:
    from torch import nn

    from retain.data.stream import TensorData
    from retain.strategies.base import Strategy
    from retain.train.context import TaskContext

LOG_EVERY = 25


@dataclass
class FitStats:
    """What one task's training did."""

    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since last)
    lrs: list[tuple[int, float]] = field(default_factory=list)  # (step, learning-rate factor)
    best_val_loss: float | None = None
    stopped_early_at: int | None = None

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


class NullProgress:
    def task(self, name: str, total: int) -> None: ...
    def advance(self, steps: int, loss: float | None) -> None: ...
    def done(self) -> None: ...


def _hooks(strategies: list[Strategy], name: str) -> list[Strategy]:
    return [s for s in strategies if overrides(s, name)]


def validation_loss(model: nn.Module, data: TensorData, ctx: TaskContext) -> float:
    was_training = model.training
    model.eval()
    total, n = torch.zeros((), device=ctx.device), 0
    with torch.no_grad():
        for batch in ctx.make_loader(data, batch_size=1024, shard=False):
            out = ctx.forward(model, batch)
            total += ctx.task_loss(out, batch, reduction="sum").float()
            n += len(next(iter(batch.values())))
    model.train(was_training)
    return float(total) / max(n, 1)


def fit_task(
    model: nn.Module,
    data: TensorData,
    ctx: TaskContext,
    strategies: list[Strategy],
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    schedule_offset: int = 0,
    val: TensorData | None = None,
    progress: Any = None,
) -> FitStats:
    """Train ``model`` on ``data`` for ``cfg.steps`` steps or ``cfg.epochs`` epochs.

    ``schedule_offset`` is where this task starts in ``schedule`` (non-zero when one schedule
    spans the whole run). With ``cfg.patience`` and a validation set, training stops after that
    many validations without improvement and the best weights are restored.
    """
    cfg, acc = ctx.train, ctx.accelerator
    progress = progress or NullProgress()
    batch_hooks, loss_hooks = _hooks(strategies, "batch"), _hooks(strategies, "loss")
    grad_hooks, step_hooks = _hooks(strategies, "after_backward"), _hooks(strategies, "after_step")
    objective, mask_for = ctx.objective, ctx.mask_for
    known = task_known(ctx.stream.setting)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    # Unwrapped fast path (see api.needs_wrappers): plain backward, no autocast context.
    wrapped = hasattr(optimizer, "optimizer") or acc.scaler is not None
    backward = acc.backward if wrapped else torch.Tensor.backward
    autocast = acc.autocast if acc.mixed_precision != "no" else contextlib.nullcontext

    loader = ctx.make_loader(data, shuffle=True)
    batches_per_epoch = len(loader)
    steps_per_epoch = max(1, -(-batches_per_epoch // cfg.grad_accum))
    total = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    early = cfg.patience is not None and val is not None and len(val) > 0
    eval_every = cfg.eval_every or steps_per_epoch
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    bad_evals = 0

    stats = FitStats()
    progress.task(f"train {ctx.task.name}", total)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=acc.device)
    loss_count, last_logged, micro = 0, 0, 0
    start = time.perf_counter()
    step = 0
    while step < total:
        for batch in loader:
            n_batch = len(batch["task"])
            for s in batch_hooks:
                batch = s.batch(batch, ctx)
            with autocast():
                out = objective.forward(model, batch, known)
                loss = objective.loss(out, batch, mask_for(batch))
                for s in loss_hooks:
                    loss = s.loss(loss, out, batch, ctx)
            backward(loss / cfg.grad_accum if cfg.grad_accum > 1 else loss)
            loss_sum += loss.detach()
            loss_count += 1
            stats.samples += n_batch
            micro += 1
            if micro % cfg.grad_accum and micro < batches_per_epoch * (ctx.epoch + 1):
                continue
            for s in grad_hooks:
                s.after_backward(model, ctx)
            if cfg.grad_clip is not None:
                if wrapped:
                    acc.clip_grad_norm_(params, cfg.grad_clip)
                else:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            factor = schedule.factor(schedule_offset + step)
            set_lr(optimizer, factor)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            ctx.step = step
            for s in step_hooks:
                s.after_step(model, ctx)
            if step % LOG_EVERY == 0 or step == total:
                mean = float(loss_sum) / max(loss_count, 1)
                if mean != mean or mean in (float("inf"), float("-inf")):
                    raise RetainError(
                        f"the training loss became {mean} on task '{ctx.task.name}' by step {step}; "
                        "lower train.lr or set train.grad_clip"
                    )
                stats.losses.append((step, mean))
                stats.lrs.append((step, factor))
                progress.advance(step - last_logged, mean)
                last_logged = step
                loss_sum.zero_()
                loss_count = 0
            if early and (step % eval_every == 0 or step == total):
                v = validation_loss(model, val, ctx)
                if best is None or v < best[0]:
                    best = (v, copy.deepcopy(acc.unwrap_model(model).state_dict()))
                    bad_evals = 0
                else:
                    bad_evals += 1
                    if bad_evals >= cfg.patience:
                        stats.stopped_early_at = step
                        total = step
            if step >= total:
                break
        ctx.epoch += 1
    if best is not None:
        acc.unwrap_model(model).load_state_dict(best[1])
        stats.best_val_loss = best[0]
    if last_logged < step:
        progress.advance(step - last_logged, None)
    stats.steps = step
    stats.seconds = time.perf_counter() - start
    progress.done()
    return stats
