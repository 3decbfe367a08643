"""Evaluate a model on every task's test set: one row of the matrix R per call.

Scores are accumulated as sums over the whole test set (then all-reduced across processes) and
divided once at the end, so a score does not depend on the batch size or the number of processes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from retain.data.loader import TensorLoader
from retain.objectives import task_known

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

    from retain.data.stream import Stream


def evaluate(
    model: nn.Module,
    stream: Stream,
    objective: Any,
    accelerator: Accelerator,
    batch_size: int = 1024,
    split: str = "test",
    progress: Any = None,
    label: str = "eval",
) -> list[dict[str, Any]]:
    """Scores of ``model`` on each task of ``stream`` (a list with one dict per task)."""
    class_mask = stream.class_mask()
    # The task-aware view beside class-IL accuracy (mammoth reports both from one run).
    task_view = None
    if (
        stream.setting == "class_il"
        and stream.objective == "classification"
        and all(t.classes is not None for t in stream.tasks)
        and len(stream.tasks) > 1
    ):
        task_view = torch.zeros(len(stream.tasks), stream.n_outputs, dtype=torch.bool)
        for i, t in enumerate(stream.tasks):
            task_view[i, list(t.classes)] = True
    known = task_known(stream.setting)
    device = accelerator.device
    if class_mask is not None:
        class_mask = class_mask.to(device)
    if task_view is not None:
        task_view = task_view.to(device)

    was_training = model.training
    model.eval()
    if progress is not None:
        progress.task(label, len(stream.tasks))
    rows = []
    with torch.no_grad():
        for task in stream.tasks:
            data = getattr(task, split)
            loader = TensorLoader(
                data,
                batch_size,
                device=device,
                rank=accelerator.process_index,
                world_size=accelerator.num_processes,
                even=False,
            )
            total: dict[str, torch.Tensor] = {}
            for batch in loader:
                with accelerator.autocast():
                    out = objective.forward(model, batch, task_known=known)
                t = batch["task"]
                s = objective.stats(
                    out,
                    batch,
                    class_mask[t] if class_mask is not None else None,
                    task_view[t] if task_view is not None else None,
                )
                for k, v in s.items():
                    total[k] = total[k] + v if k in total else v
            if accelerator.num_processes > 1:
                total = {k: accelerator.reduce(v, reduction="sum") for k, v in total.items()}
            rows.append(objective.finalize(total))
            if progress is not None:
                progress.advance(1, None)
    if progress is not None:
        progress.done()
    model.train(was_training)
    return rows
