"""What a task's batches are made of and in which order: data mixing and a difficulty order.

:func:`train_loader` gives the loop its batches: a plain shuffled loader; a
:class:`~retain.data.mixing.MixedLoader` when the stream mixes pools into the task
(``Stream.mix``); with ``train.order`` easy_first / hard_first, the task's own samples sorted by
the model's loss on each of them before the task trains (:func:`order_by_loss`: one forward pass
over the task's training data, no gradients). Sorting by the model's own loss is the "self-paced"
curriculum of Kumar et al. 2010 fixed at the start of the task; hard_first is its anti-curriculum.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from retain.data.mixing import MixedLoader
from retain.train.optim import steps_for

if TYPE_CHECKING:
    from torch import nn

    from retain.config import TrainConfig
    from retain.data.stream import TensorData
    from retain.strategies.context import TaskContext


def per_sample_losses(model: nn.Module, data: TensorData, ctx: TaskContext) -> torch.Tensor:
    """The objective's loss on every sample of ``data`` (a token block's mean token loss), with
    the model in eval mode and no gradients; the same on every process."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad(), ctx.autocast():
        for batch in ctx.make_loader(data, shard=False):
            pred = ctx.forward(model, batch)
            out.append(ctx.task_loss(pred, batch, reduction="none").float().cpu())
    model.train(was_training)
    return torch.cat(out)


def order_by_loss(
    model: nn.Module, data: TensorData, ctx: TaskContext, hardest_first: bool = False
) -> tuple[TensorData, dict[str, Any]]:
    """``data`` sorted by the model's loss on each sample (lowest first, or highest first), and
    what the run record keeps of it (the losses' range, the seconds the pass took)."""
    t0 = time.perf_counter()
    losses = per_sample_losses(model, data, ctx)
    order = torch.sort(losses, descending=hardest_first, stable=True).indices
    info = {
        "order": "hard_first" if hardest_first else "easy_first",
        "first_loss": float(losses[order[0]]),
        "last_loss": float(losses[order[-1]]),
        "seconds": time.perf_counter() - t0,
    }
    return data[order], info


def train_loader(
    model: nn.Module, data: TensorData, ctx: TaskContext, cfg: TrainConfig
) -> tuple[Any, dict[str, Any]]:
    """The batches of the task ``ctx.task`` whose training data is ``data``, and what the run
    record keeps of how they were drawn (filled in further by :func:`realised` after training).
    """
    info: dict[str, Any] = {}
    ordered = cfg.order != "shuffled"
    if ordered:
        data, info = order_by_loss(model, data, ctx, hardest_first=cfg.order == "hard_first")
    mix = ctx.stream.mix.get(ctx.task.name)
    if mix is None:
        return ctx.make_loader(data, shuffle=not ordered), info
    pools = {}
    for name in mix.pools:
        if name == ctx.task.name:
            pools[name] = data
        elif name in ctx.stream.task_names:
            pools[name] = ctx.stream.tasks[ctx.stream.task_names.index(name)].train
        else:  # a source: its samples train the current task
            src = ctx.stream.sources[name]
            pools[name] = src.with_tensor(
                "task", torch.full((len(src),), ctx.task_index, dtype=torch.long)
            )
    plain = ctx.make_loader(data)  # the task's own batches per epoch set the budget
    loader = MixedLoader(
        pools,
        mix,
        ctx.batch_size,
        len(plain),
        steps_for(len(data), cfg, ctx.world_size),
        cfg.grad_accum,
        ordered=(ctx.task.name,) if ordered else (),
        generator=ctx.generator,
        device=ctx.device,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    return loader, info


def realised(loader: Any, info: dict[str, Any]) -> dict[str, Any] | None:
    """The per-task entry of the run record's ``curriculum``: the order, the realised mix."""
    out = dict(info)
    if isinstance(loader, MixedLoader):
        out.update(loader.realised())
    return out or None
