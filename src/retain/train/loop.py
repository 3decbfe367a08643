"""``fit_task``: the single inner training loop, on Hugging Face Accelerate.

It owns zero_grad, backward, gradient accumulation, clipping, the learning-rate schedule and the
optimizer step; strategies change the batch and the loss through their hooks and may edit
gradients in ``after_backward``. Hooks nobody implements are never called, so an unused hook costs
nothing per step. Nothing in a step reads a tensor back to the host: the loss is summed on the
device and read every ``LOG_EVERY`` steps (with the task's first loss, for the divergence check),
since a read-back every step would make the CPU wait for the GPU on each batch. Under several
processes the micro-batches of an accumulated step skip DDP's gradient all-reduce (``no_sync``):
only the step's last backward averages the summed gradients. The loop's own state (step, epoch,
the running loss) lives here, in ``_Loop``; strategies see only the frozen ``TaskContext``.

Mid-task checkpoints (``Checkpoints``): every N optimizer steps the loop hands its own state (the
counters, the running loss, early stopping, the statistics so far and the loader's position) to a
``save`` callback, which adds the model, optimizer, strategies and random state
(:mod:`retain.midtask`); given such a state, the loop continues from it.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from retain.errors import RetainError
from retain.strategies.base import overrides
from retain.train.optim import Schedule, set_lr

if TYPE_CHECKING:
    from torch import nn

    from retain.config import TrainConfig
    from retain.data.stream import TensorData
    from retain.strategies.base import Strategy
    from retain.strategies.context import TaskContext

LOG_EVERY = 25


@dataclass
class FitStats:
    """What one task's training did."""

    steps: int = 0
    samples: int = 0
    tokens: int | None = None  # language models: attended tokens trained on
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since last)
    lrs: list[tuple[int, float]] = field(default_factory=list)  # (step, learning-rate factor)
    best_val_loss: float | None = None
    stopped_early_at: int | None = None
    curriculum: dict[str, Any] | None = None  # how the batches were drawn (mixing, order)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float | None:
        if self.tokens is None:
            return None
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Every:
    """Work done every ``steps`` optimizer steps inside a task, e.g. evaluating every task.

    ``call(step, model)`` returns True to end the task at that step (a guard that stops when an
    earlier task's score drops); the loop calls nothing when a run sets no ``Every``."""

    steps: int
    call: Callable[[int, nn.Module], bool]


@dataclass(frozen=True)
class Checkpoints:
    """Mid-task checkpoints: ``save(state)`` every ``every`` optimizer steps, with the loop's
    state (see :func:`loop_state`); ``resume``: a state saved so, to continue the task from."""

    every: int | None
    save: Callable[[dict[str, Any]], None]
    resume: dict[str, Any] | None = None


class NullProgress:
    def task(self, name: str, total: int) -> None: ...
    def advance(self, steps: int, loss: float | None) -> None: ...
    def done(self) -> None: ...


@dataclass
class _Loop:
    """The loop's state for one task: counters, the running loss and early stopping."""

    total: int
    batches_per_epoch: int
    grad_accum: int
    validate_every: int | None  # optimizer steps between validations; None: no early stopping
    loss_sum: torch.Tensor
    step: int = 0
    epoch: int = 0
    micro: int = 0
    loss_count: int = 0
    last_logged: int = 0
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    bad_evals: int = 0
    first_loss: torch.Tensor | None = None  # the task's first micro-batch loss (on the device)

    @classmethod
    def for_task(cls, batches: int, cfg: TrainConfig, early: bool, device: Any) -> _Loop:
        """``cfg.steps`` optimizer steps, or ``cfg.epochs`` epochs of ``batches`` micro-batches."""
        steps_per_epoch = max(1, -(-batches // cfg.grad_accum))
        total = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
        validate_every = (cfg.eval_every or steps_per_epoch) if early else None
        return cls(total, batches, cfg.grad_accum, validate_every, torch.zeros((), device=device))

    def completes_step(self) -> bool:
        """Whether the next micro-batch's gradients complete an optimizer step: every
        ``grad_accum`` micro-batches, and at the end of an epoch."""
        micro = self.micro + 1
        return micro % self.grad_accum == 0 or micro >= self.batches_per_epoch * (self.epoch + 1)

    def micro_batch(self, loss: torch.Tensor) -> None:
        """Count one micro-batch's (detached) loss, on the device."""
        self.loss_sum += loss
        self.loss_count += 1
        self.micro += 1
        if self.first_loss is None:
            self.first_loss = loss.clone()

    def validates_now(self) -> bool:
        if self.validate_every is None:
            return False
        return self.step % self.validate_every == 0 or self.step == self.total


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
    cfg: TrainConfig,
    accelerator: Any,
    *,
    schedule_offset: int = 0,
    val: TensorData | None = None,
    progress: Any = None,
    every: Every | None = None,
    loader: Any = None,
    tracker: Any = None,
    checkpoints: Checkpoints | None = None,
) -> FitStats:
    """Train ``model`` on ``data`` for ``cfg.steps`` steps or ``cfg.epochs`` epochs.

    ``schedule_offset`` is where this task starts in ``schedule`` (non-zero when one schedule
    spans the whole run). With ``cfg.patience`` and a validation set, training stops after that
    many validations without improvement and the best weights are restored. ``every`` runs
    every ``every.steps`` optimizer steps (evaluation inside a task). ``loader``: the batches
    (default: ``data`` shuffled every epoch; see :func:`retain.train.curriculum.train_loader`).
    ``tracker``: the run's experiment trackers (:mod:`retain.train.tracking`), or None.
    ``checkpoints``: save the loop's state every N steps, or continue from a saved one.
    """
    progress = progress or NullProgress()
    stepper = _Stepper(
        model, ctx, strategies, optimizer, schedule, cfg, accelerator, schedule_offset
    )
    loader = loader if loader is not None else ctx.make_loader(data, shuffle=True)
    early = cfg.patience is not None and val is not None and len(val) > 0
    loop = _Loop.for_task(len(loader), cfg, early, ctx.device)
    stats = FitStats()
    progress.task(f"train {ctx.task.name}", loop.total)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    # Summed on the device and read once at the end: reading it per step would synchronise.
    tokens = torch.zeros((), dtype=torch.long, device=ctx.device) if "input_ids" in data else None
    saving = checkpoints.every if checkpoints is not None else None
    if checkpoints is not None and checkpoints.resume is not None:
        tokens = _resume(loop, stats, loader, checkpoints.resume, tokens)
        progress.advance(loop.last_logged, None)
    elapsed = stats.seconds
    start = time.perf_counter()
    while loop.step < loop.total:
        for batch in loader:
            stats.samples += len(batch["task"])
            if tokens is not None:
                mask = batch.get("attention_mask")
                tokens += mask.sum() if mask is not None else batch["input_ids"].numel()
            steps = loop.completes_step()
            loss = stepper.forward_backward(batch, sync=steps)
            loop.micro_batch(loss.detach())
            if not steps:
                continue  # accumulate the next micro-batch's gradients
            factor = stepper.optimizer_step(loop.step)
            loop.step += 1
            if loop.step % LOG_EVERY == 0 or loop.step == loop.total:
                _log(loop, stats, factor, progress, ctx.task.name)
                if tracker is not None:
                    tracker.train_step(loop.step, stats.losses[-1][1], factor)
            if loop.validates_now():
                _validate(loop, stats, model, val, ctx, accelerator, cfg.patience)
            if every is not None and loop.step % every.steps == 0 and every.call(loop.step, model):
                stats.stopped_early_at = loop.total = loop.step
            if saving and loop.step % saving == 0:
                stats.seconds = elapsed + time.perf_counter() - start
                checkpoints.save(loop_state(loop, stats, loader, tokens))
            if loop.step >= loop.total:
                break
        loop.epoch += 1
    if loop.best is not None:
        accelerator.unwrap_model(model).load_state_dict(loop.best[1])
        stats.best_val_loss = loop.best[0]
    if loop.last_logged < loop.step:
        progress.advance(loop.step - loop.last_logged, None)
    stats.steps, stats.seconds = loop.step, elapsed + time.perf_counter() - start
    stats.tokens = int(tokens) if tokens is not None else None
    progress.done()
    return stats


class _Stepper:
    """A micro-batch's forward and backward, and an optimizer step, with the strategies' hooks."""

    def __init__(
        self,
        model: nn.Module,
        ctx: TaskContext,
        strategies: list[Strategy],
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        cfg: TrainConfig,
        accelerator: Any,
        schedule_offset: int,
    ) -> None:
        self.model, self.ctx, self.optimizer, self.cfg = model, ctx, optimizer, cfg
        self.schedule, self.offset, self.accelerator = schedule, schedule_offset, accelerator
        self.batch_hooks, self.loss_hooks = _hooks(strategies, "batch"), _hooks(strategies, "loss")
        self.grad_hooks = _hooks(strategies, "after_backward")
        self.step_hooks = _hooks(strategies, "after_step")
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        # Unwrapped fast path (see runtime.needs_wrappers): plain backward, no autocast context.
        self.wrapped = hasattr(optimizer, "optimizer") or ctx.grads_are_scaled
        self.backward = accelerator.backward if self.wrapped else torch.Tensor.backward
        # Accumulated micro-batches skip DDP's all-reduce (the step's last backward averages the
        # sum); Accelerate's no_sync is a no-op for engines that accumulate by themselves.
        several = self.wrapped and getattr(accelerator, "num_processes", 1) > 1
        self.no_sync = accelerator.no_sync if several and cfg.grad_accum > 1 else None
        # fp16: the gradients are unscaled once, before the gradient hooks, so that the hooks
        # (A-GEM's projection, a penalty's gradient) and clipping see true gradients; the scaler's
        # step then reuses that unscaling. Sharded engines (FSDP, DeepSpeed) unscale in their clip.
        self.unscale = ctx.grads_are_scaled and ctx.grads_are_local

    def forward_backward(self, batch: dict[str, torch.Tensor], sync: bool = True) -> torch.Tensor:
        """One micro-batch: the batch and loss hooks, forward and backward (without the
        processes' gradient all-reduce when ``sync`` is False); returns the loss, on the device."""
        ctx, grad_accum = self.ctx, self.cfg.grad_accum
        skip = self.no_sync(self.model) if not sync and self.no_sync else contextlib.nullcontext()
        with skip:
            for s in self.batch_hooks:
                batch = s.batch(batch, ctx)
            with ctx.autocast():
                out = ctx.forward(self.model, batch)
                loss = ctx.task_loss(out, batch)
                for s in self.loss_hooks:
                    loss = s.loss(loss, out, batch, ctx)
            self.backward(loss / grad_accum if grad_accum > 1 else loss)
        return loss

    def optimizer_step(self, step: int) -> float:
        """Gradient hooks, clipping, the learning rate of ``step``, the step; returns the factor."""
        if self.unscale:
            self.accelerator.unscale_gradients(self.optimizer)
        for s in self.grad_hooks:
            s.after_backward(self.model, self.ctx)
        if self.cfg.grad_clip is not None:
            if self.wrapped and not self.unscale:
                self.accelerator.clip_grad_norm_(self.params, self.cfg.grad_clip)
            else:  # what Accelerate's does on one process or DDP, less a second unscaling
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        factor = self.schedule.factor(self.offset + step)
        set_lr(self.optimizer, factor)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for s in self.step_hooks:
            s.after_step(self.model, self.ctx)
        return factor


# A logged mean loss this many times the task's first loss (or 1e-2, whichever is larger) has
# diverged as surely as a NaN: a learning rate of 1e6 drives cross-entropy to 1e13 and on, and
# every later number of the run would be meaningless.
EXPLODED = 1e6


def _log(loop: _Loop, stats: FitStats, factor: float, progress: Any, task: str) -> None:
    # A log interval's one read-back: the summed loss and the task's first loss together.
    first_loss = loop.first_loss if loop.first_loss is not None else loop.loss_sum
    total, first = torch.stack([loop.loss_sum.float(), first_loss.float()]).tolist()
    mean = total / max(loop.loss_count, 1)
    if loop.first_loss is None:
        first = mean
    exploded = math.isfinite(first) and mean > EXPLODED * max(abs(first), 1e-2)
    if not math.isfinite(mean) or exploded:
        since = f" (from {first:.3g} at the task's first step)" if exploded else ""
        raise RetainError(
            f"the training loss became {mean:.3g}{since} on task '{task}' by step {loop.step}; "
            "lower train.lr or set train.grad_clip"
        )
    stats.losses.append((loop.step, mean))
    stats.lrs.append((loop.step, factor))
    progress.advance(loop.step - loop.last_logged, mean)
    loop.last_logged = loop.step
    loop.loss_sum.zero_()
    loop.loss_count = 0


def _validate(
    loop: _Loop,
    stats: FitStats,
    model: nn.Module,
    val: TensorData,
    ctx: TaskContext,
    accelerator: Any,
    patience: int,
) -> None:
    """Early stopping: keep the best weights; end the task after ``patience`` worse validations."""
    v = validation_loss(model, val, ctx)
    if loop.best is None or v < loop.best[0]:
        loop.best = (v, copy.deepcopy(accelerator.unwrap_model(model).state_dict()))
        loop.bad_evals = 0
        return
    loop.bad_evals += 1
    if loop.bad_evals >= patience:
        stats.stopped_early_at = loop.step
        loop.total = loop.step


def loop_state(
    loop: _Loop, stats: FitStats, loader: Any, tokens: torch.Tensor | None
) -> dict[str, Any]:
    """The loop's state after an optimizer step: enough, with the model, optimizer, strategies
    and random state, to continue the task exactly as if it had not stopped. ``loader`` has
    ``state_dict``/``load_state_dict`` (its place in the current pass over the data)."""
    best = loop.best
    return {
        "step": loop.step,
        "epoch": loop.epoch,
        "micro": loop.micro,
        "total": loop.total,
        "loss_sum": loop.loss_sum,
        "loss_count": loop.loss_count,
        "last_logged": loop.last_logged,
        "first_loss": loop.first_loss,
        "bad_evals": loop.bad_evals,
        "best_loss": best[0] if best is not None else None,
        "best": best[1] if best is not None else None,
        "tokens": int(tokens) if tokens is not None else None,
        "stats": {
            "samples": stats.samples,
            "seconds": stats.seconds,
            "losses": stats.losses,
            "lrs": stats.lrs,
            "best_val_loss": stats.best_val_loss,
            "stopped_early_at": stats.stopped_early_at,
        },
        "loader": loader.state_dict(),
    }


def _resume(
    loop: _Loop, stats: FitStats, loader: Any, state: dict[str, Any], tokens: torch.Tensor | None
) -> torch.Tensor | None:
    """Put ``loop``, ``stats`` and ``loader`` where :func:`loop_state` found them."""
    for key in ("step", "epoch", "micro", "total", "loss_count", "last_logged", "bad_evals"):
        setattr(loop, key, int(state[key]))
    loop.loss_sum = state["loss_sum"].to(loop.loss_sum.device, loop.loss_sum.dtype)
    first = state["first_loss"]  # read back on the CPU; summed with the loss on the device
    loop.first_loss = None if first is None else first.to(loop.loss_sum.device)
    if state["best"] is not None:
        loop.best = (state["best_loss"], state["best"])
    saved = state["stats"]
    stats.samples, stats.seconds = int(saved["samples"]), float(saved["seconds"])
    stats.losses = [(int(s), float(v)) for s, v in saved["losses"]]
    stats.lrs = [(int(s), float(v)) for s, v in saved["lrs"]]
    stats.best_val_loss, stats.stopped_early_at = saved["best_val_loss"], saved["stopped_early_at"]
    loader.load_state_dict(state["loader"])
    if tokens is not None and state["tokens"] is not None:
        tokens = torch.full_like(tokens, int(state["tokens"]))
    return tokens
