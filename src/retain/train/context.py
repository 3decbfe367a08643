"""What a strategy may see: the task, the stream, and helpers for extra forward passes.

Strategies read ``TaskContext``; only the loop writes it (``step``, ``epoch``). It is enough for a
Fisher pass, a teacher forward or a buffer update without reaching into the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from retain.data.loader import TensorLoader

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

    from retain.config import TrainConfig
    from retain.data.stream import Stream, Task, TensorData
    from retain.objectives import CausalLM, Classification, Regression


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
        elif accelerator is not None and type(inner).__module__.startswith(("deepspeed", "torch.distributed.fsdp")):
            return accelerator.unwrap_model(inner)
        else:
            return inner


@dataclass
class TaskContext:
    """Read-only view for strategies (the loop updates ``step`` and ``epoch``).

    ``model`` is the model being trained (as prepared by Accelerate), set before the task's
    first batch; hooks that receive no model argument use it for extra forward passes."""

    stream: Stream
    task: Task
    task_index: int
    objective: Classification | Regression | CausalLM
    accelerator: Accelerator
    train: TrainConfig
    seed: int
    generator: torch.Generator
    class_mask: torch.Tensor | None = None
    model: nn.Module | None = None
    step: int = 0
    epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def seen_tasks(self) -> tuple[Task, ...]:
        """Tasks up to and including the current one."""
        return self.stream.tasks[: self.task_index + 1]

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    def make_loader(self, data: TensorData, batch_size: int | None = None,
                    shuffle: bool = False, shard: bool = True) -> TensorLoader:
        """Batches on this process's device; ``shard=False`` gives every rank all the data."""
        acc = self.accelerator
        return TensorLoader(
            data, batch_size or self.train.batch_size, shuffle=shuffle, generator=self.generator,
            device=acc.device, rank=acc.process_index if shard else 0,
            world_size=acc.num_processes if shard else 1,
        )

    def unwrap(self, model: nn.Module) -> nn.Module:
        """``model`` without DDP / compile wrappers (cheap: see :func:`unwrap`)."""
        return unwrap(model, self.accelerator)

    def mask_for(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Task-IL logit mask rows for this batch's samples (None outside task_il)."""
        if self.class_mask is None:
            return None
        return self.class_mask.to(batch["task"].device)[batch["task"]]

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """The model's output on ``batch`` (logits, or a transformers ModelOutput); task-aware
        models get the task ids where evaluation gives them (``objectives.task_known``)."""
        from retain.objectives import task_known

        return self.objective.forward(model, batch, task_known(self.stream.setting))

    def logits(self, out: Any) -> torch.Tensor:
        from retain.objectives import logits_of

        return logits_of(out)

    def task_loss(self, out: Any, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
        """The objective's loss (task-IL masking included), e.g. for a Fisher or a buffer batch."""
        return self.objective.loss(out, batch, self.mask_for(batch), reduction=reduction)

    def all_reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        """Average (or sum) a tensor over processes, so every rank holds the same value."""
        if self.accelerator.num_processes == 1:
            return tensor
        return self.accelerator.reduce(tensor, reduction=op)
