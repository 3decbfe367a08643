"""Evaluate a model on every task's test set: one row of the matrix R per call.

Scores are accumulated as sums over the whole test set (then all-reduced across processes) and
divided once at the end, so a score does not depend on the batch size or the number of processes.

What keeps it cheap: ``torch.no_grad``, the accelerator's autocast (bf16 or fp16 when
``train.mixed_precision`` asks for it), ``eval.batch_size`` rows per batch, capped for language
models so one batch's logits stay small, and no labels given to a language model, whose own loss
would be a second pass over the vocabulary. :func:`evaluate_sets` scores named sets that are not
tasks (evaluation suites) the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from retain.data.loader import TensorLoader
from retain.objectives import task_known

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

    from retain.data.stream import Stream, TensorData


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
            total = _sums(
                model,
                getattr(task, split),
                objective,
                accelerator,
                batch_size,
                known,
                class_mask,
                task_view,
            )
            rows.append(objective.finalize(total))
            if progress is not None:
                progress.advance(1, None)
    if progress is not None:
        progress.done()
    model.train(was_training)
    return rows


def evaluate_sets(
    model: nn.Module,
    sets: dict[str, TensorData],
    objective: Any,
    accelerator: Accelerator,
    batch_size: int = 1024,
    class_mask: torch.Tensor | None = None,
    known: bool = False,
) -> dict[str, dict[str, float]]:
    """Scores of ``model`` on named data sets: ``{name: {score: value}}``, the numbers only.

    For evaluation suites (sets that are not tasks) no task is known: a task-incremental model is
    scored over all its outputs, as in class-IL. A task's own data (with its ``task`` tensor) is
    scored as R scores it when given the stream's ``class_mask`` and ``known``
    (:func:`retain.objectives.task_known`)."""
    was_training = model.training
    model.eval()
    out = {}
    with torch.no_grad():
        for name, data in sets.items():
            mask = class_mask if "task" in data else None
            total = _sums(model, data, objective, accelerator, batch_size, known, mask, None)
            cell = objective.finalize(total)
            out[name] = {k: v for k, v in cell.items() if isinstance(v, float)}
    model.train(was_training)
    return out


# The largest logits tensor one evaluation batch of a language model may make, in elements
# (256 MB in float32): logits are [batch, block, vocabulary], so an evaluation batch size that
# suits tables (1024) would ask a 50k-token vocabulary for tens of gigabytes.
LOGITS_BUDGET = 2**26


def rows_per_batch(model: nn.Module, data: TensorData, batch_size: int) -> int:
    """``batch_size``, capped for language models so one batch's logits fit ``LOGITS_BUDGET``."""
    ids = data.get("input_ids")
    inner = getattr(model, "module", model)
    vocab = getattr(getattr(inner, "config", None), "vocab_size", None)
    if ids is None or not isinstance(vocab, int) or ids.ndim < 2:
        return batch_size
    return max(1, min(batch_size, LOGITS_BUDGET // max(1, ids.shape[1] * vocab)))


def _sums(
    model: nn.Module,
    data: TensorData,
    objective: Any,
    accelerator: Accelerator,
    batch_size: int,
    known: bool,
    class_mask: torch.Tensor | None,
    task_view: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """The objective's summable statistics over ``data`` (all-reduced across processes)."""
    loader = TensorLoader(
        data,
        rows_per_batch(model, data, batch_size),
        device=accelerator.device,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        even=False,
    )
    total: dict[str, torch.Tensor] = {}
    for batch in loader:
        # A language model is not given the labels: it would compute its own loss over the
        # whole vocabulary a second time, and the statistics below compute it from the logits.
        inputs = (
            {k: v for k, v in batch.items() if k != "labels"} if "input_ids" in batch else batch
        )
        with accelerator.autocast():
            out = objective.forward(model, inputs, task_known=known)
        t = batch.get("task")
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
    return total
