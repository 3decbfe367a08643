"""The Accelerator, and the one place that translates it into what strategies see.

Strategies get a frozen :class:`~retain.strategies.context.TaskContext` whose named values and
operations (``autocast``, ``gather``, ``rank``, ``grads_are_local``, ...) are read here from the
Accelerator; nothing else in a strategy's reach holds the Accelerator.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from retain.objectives import task_known
from retain.strategies.context import TaskContext, unwrap

if TYPE_CHECKING:
    from retain.config import TrainConfig
    from retain.data.stream import Stream, Task


def make_accelerator(train: TrainConfig, run_dir: Path | None = None) -> Any:
    """The run's Accelerator; with ``train.log_with``, its trackers write under ``run_dir``."""
    from accelerate import Accelerator

    from retain.train.tracking import accelerator_options

    # Accelerate forms a CPU process group (gloo) only when told to use the CPU: without CUDA, a
    # multi-process launch (torchrun, accelerate launch) would otherwise run N unrelated copies.
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cpu = train.cpu or (launched and not torch.cuda.is_available())
    _forget_mixed_precision(train.mixed_precision)
    return Accelerator(
        cpu=cpu, mixed_precision=train.mixed_precision, **accelerator_options(train, run_dir)
    )


def _forget_mixed_precision(wanted: str) -> None:
    """Accelerate keeps one mixed-precision setting per process and refuses another: a second run
    in the same process (the Python API, a notebook) with other settings would fail. The
    distributed state (``PartialState``) is kept; only the precision is set again."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and str(AcceleratorState().mixed_precision) != wanted:
        AcceleratorState._reset_state()


def needs_wrappers(acc: Any) -> bool:
    """Whether the model and optimizer must go through ``accelerator.prepare``.

    With one process and no fp16 loss scaler the wrappers change nothing, but
    ``AcceleratedOptimizer`` inspects the wrapped optimizer's signature on every ``zero_grad``
    and checks package availability on every ``step``: at batch size 10 that was 40% of a step.
    Several processes (DDP, FSDP, DeepSpeed), fp16 and XLA always take the prepared path.
    """
    from accelerate.utils import DistributedType

    return (
        acc.num_processes > 1
        or acc.scaler is not None
        or acc.distributed_type not in (DistributedType.NO, DistributedType.MULTI_CPU)
    )


def grads_are_local(acc: Any) -> bool:
    """Whole, unscaled gradients in each parameter's ``.grad`` when ``after_backward`` runs (see
    ``TaskContext``): no engine that shards them (one process, or DDP on CPUs or GPUs). An fp16
    loss scaler does not prevent it: there the loop unscales the gradients before the hooks."""
    from accelerate.utils import DistributedType

    return acc.distributed_type in (
        DistributedType.NO,
        DistributedType.MULTI_CPU,
        DistributedType.MULTI_GPU,
    )


def task_context(
    acc: Any,
    train: TrainConfig,
    stream: Stream,
    task: Task,
    task_index: int,
    objective: Any,
    seed: int,
    generator: torch.Generator,
    class_mask: torch.Tensor | None = None,
    n_tasks: int | None = None,
) -> TaskContext:
    """The context of task ``task_index`` (``model`` unset: the loop sets it after prepare)."""
    plain_sgd = train.optimizer == "sgd" and train.momentum == 0
    return TaskContext(
        stream=stream,
        task=task,
        task_index=task_index,
        objective=objective,
        seed=seed,
        generator=generator,
        batch_size=train.batch_size,
        device=acc.device,
        rank=acc.process_index,
        world_size=acc.num_processes,
        grads_are_local=grads_are_local(acc),
        grads_are_scaled=acc.scaler is not None,
        sgd_lr=train.lr if plain_sgd else None,
        task_known=task_known(stream.setting),
        n_tasks=n_tasks,
        class_mask=class_mask,
        autocast=acc.autocast if acc.mixed_precision != "no" else contextlib.nullcontext,
        gather=acc.gather,
        unwrap=functools.partial(unwrap, accelerator=acc),
        all_reduce=functools.partial(_all_reduce, acc),
    )


def _all_reduce(acc: Any, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
    if acc.num_processes == 1:
        return tensor
    return acc.reduce(tensor, reduction=op)
