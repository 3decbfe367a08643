"""What a strategy may see and do: the task, the stream, and named operations.

``TaskContext`` is frozen: strategies read it, and the loop's own state (step, epoch) stays in
the loop. Everything a strategy needs from the training machinery is a named value or operation
here (``autocast()``, ``gather()``, ``all_reduce()``, ``rank``, ``world_size``,
``grads_are_local``, ``forward``, ``task_loss``, ``make_loader``), so a strategy never touches
the Accelerator and runs the same on one process, under DDP or with mixed precision. The loop
builds one context per task (``retain.train.runtime.task_context``) and another, with ``model``
set, once the model has been prepared for the task.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from retain.data.loader import TensorLoader
from retain.objectives import logits_of, masked

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

    from retain.data.stream import Stream, Task, TensorData


def unwrap(model: nn.Module, accelerator: Accelerator | None = None) -> nn.Module:
    """The module inside DDP / DataParallel / ``torch.compile`` wrappers.

    ``accelerator.unwrap_model`` checks which optional packages are installed on every call
    (2-4 ms here, more than a whole MLP step at batch size 10); hooks that run every step use
    this attribute walk instead. Engines it does not know (DeepSpeed, FSDP) go to Accelerate.
    """
    from torch import nn as _nn

    inner = model
    while True:
        if isinstance(inner, (_nn.parallel.DistributedDataParallel, _nn.DataParallel)):
            inner = inner.module
        elif hasattr(inner, "_orig_mod"):  # torch.compile
            inner = inner._orig_mod
        elif accelerator is not None and type(inner).__module__.startswith(
            ("deepspeed", "torch.distributed.fsdp")
        ):
            return accelerator.unwrap_model(inner)
        else:
            return inner


def _same(value: Any) -> Any:
    return value


def _no_reduce(tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
    return tensor


@dataclass(frozen=True, eq=False)
class TaskContext:
    """Read-only view of the task being trained, for strategies' hooks.

    The defaults describe one process without mixed precision, so a test can build a context by
    hand; runs build it with ``retain.train.runtime.task_context``.

    Attributes:
        stream, task, task_index: the stream, the task being trained and its index in the run.
        objective: the stream's objective (``.name``: classification, regression, causal_lm).
        seed: the run's seed. generator: a CPU generator seeded for this task, the same on every
            process (buffers draw from it, so every rank makes the same choices).
        batch_size: the loop's batch size per process.
        device: this process's device. rank, world_size: this process and how many there are.
        grads_are_local: whether ``after_backward`` sees each parameter's whole, unscaled
            gradient in its own ``.grad`` on this process, which a hook may read and add to: one
            process, or DDP, whose backward has already averaged it over processes (so it is the
            same on every rank), fp16 included: the loop unscales ``.grad`` once before the
            hooks. False under FSDP / DeepSpeed (sharded, or held by the engine, and still
            scaled under fp16): there a penalty must go through the loss.
        grads_are_scaled: fp16 loss scaling is on. Where ``grads_are_local`` the hooks see
            unscaled gradients, but a step whose gradients overflowed still reaches them
            (holding inf or NaN) and the scaler then skips it.
        sgd_lr: the learning rate when the optimizer is plain SGD (no momentum), else None: the
            one case in which a quadratic penalty's stability can be checked in advance.
        task_known: whether task-aware models get the task ids (the ``task_il`` setting).
        n_tasks: how many tasks the run trains (one for ``joint``); None: the stream's count.
            ``is_last_task`` reads it: work whose only use is protecting the task just trained
            from later ones (EWC's Fisher pass) is skipped after the last.
        class_mask: task-IL logit mask, one row per task (None outside task_il).
        model: the model being trained, as prepared for the task (None before that: in
            ``setup``, ``before_task`` and ``param_groups`` the model is the hook's argument).
        autocast: ``with ctx.autocast():`` runs forwards in the loop's mixed precision.
        gather: every process's tensors (or dict of tensors), concatenated in rank order.
        unwrap: the module inside DDP / compile wrappers (cheap enough for every step).
        all_reduce: ``all_reduce(tensor, op="mean")`` averages (or sums, ``op="sum"``) a tensor
            over processes, so every rank holds the same value.
    """

    stream: Stream
    task: Task
    task_index: int
    objective: Any
    seed: int
    generator: torch.Generator
    batch_size: int = 32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    grads_are_local: bool = True
    grads_are_scaled: bool = False
    sgd_lr: float | None = None
    task_known: bool = False
    n_tasks: int | None = None
    class_mask: torch.Tensor | None = None
    model: nn.Module | None = None
    autocast: Callable[[], contextlib.AbstractContextManager] = field(
        default=contextlib.nullcontext, repr=False
    )
    gather: Callable[[Any], Any] = field(default=_same, repr=False)
    unwrap: Callable[[nn.Module], nn.Module] = field(default=unwrap, repr=False)
    all_reduce: Callable[..., torch.Tensor] = field(default=_no_reduce, repr=False)

    @property
    def seen_tasks(self) -> tuple[Task, ...]:
        """Tasks up to and including the current one."""
        return self.stream.tasks[: self.task_index + 1]

    @property
    def is_last_task(self) -> bool:
        """Whether no task follows this one in the run."""
        n = self.n_tasks if self.n_tasks is not None else len(self.stream.tasks)
        return self.task_index >= n - 1

    def make_loader(
        self,
        data: TensorData,
        batch_size: int | None = None,
        shuffle: bool = False,
        shard: bool = True,
    ) -> TensorLoader:
        """Batches on this process's device; ``shard=False`` gives every rank all the data."""
        return TensorLoader(
            data,
            batch_size or self.batch_size,
            shuffle=shuffle,
            generator=self.generator,
            device=self.device,
            rank=self.rank if shard else 0,
            world_size=self.world_size if shard else 1,
        )

    def mask_for(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Task-IL logit mask rows for this batch's samples (None outside task_il)."""
        if self.class_mask is None:
            return None
        return self.class_mask.to(batch["task"].device)[batch["task"]]

    def masked_logits(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``logits`` with other tasks' classes at the most negative float (task_il), as the loss
        and the scores see them; unchanged in the other settings."""
        return masked(logits, self.mask_for(batch))

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """The model's output on ``batch`` (logits, or a transformers ModelOutput); task-aware
        models get the task ids where evaluation gives them (``task_known``)."""
        return self.objective.forward(model, batch, self.task_known)

    def logits(self, out: Any) -> torch.Tensor:
        """The logits (or predictions) in a model's output."""
        return logits_of(out)

    def task_loss(
        self, out: Any, batch: dict[str, torch.Tensor], reduction: str = "mean"
    ) -> torch.Tensor:
        """The objective's loss (task-IL masking included), e.g. for a Fisher or a buffer batch."""
        return self.objective.loss(out, batch, self.mask_for(batch), reduction=reduction)
