"""Learning without Forgetting: distil the previous model's outputs on the new task's inputs."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from retain.objectives import distillation_loss
from retain.strategies import register
from retain.strategies.base import Strategy, fails_in_class_il

if TYPE_CHECKING:
    from torch import nn

    from retain.strategies.context import TaskContext


@register("lwf", reference_url="https://arxiv.org/abs/1606.09282")
@dataclass(repr=False)  # keep Strategy.__repr__: only non-default fields
class LwF(Strategy):
    """Learning without Forgetting: keep the new model's outputs close to the previous model's.

    Before each task after the first, a frozen copy of the model becomes the teacher. Training
    adds ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))`` on the new task's
    inputs (and on replayed ones, when composed with replay), so the outputs the old model gave
    are preserved without storing old data. When tasks have their own classes (class_il,
    task_il) only the outputs of earlier tasks' classes are distilled (mammoth); in domain_il all
    outputs; for causal LMs, every next-token distribution over the vocabulary, padding
    excluded. The teacher costs one extra forward pass per batch and a copy of the model.

    Args:
        alpha: Weight of the distillation term against the task loss (the paper's lambda_o, 1).
        temperature: Softmax temperature T; above 1 it softens both distributions so the
            teacher's ranking of the wrong classes is transferred too (the paper and mammoth: 2).

    Reference: Li and Hoiem, "Learning without Forgetting" (ECCV 2016 / TPAMI 2017); mammoth's
    ``models/lwf.py``.
    """

    alpha: float = field(default=1.0, metadata={"ge": 0})
    temperature: float = field(default=2.0, metadata={"gt": 0})

    known_failures: ClassVar[dict[str, str]] = {
        "class_il": fails_in_class_il("distillation on new-task data")
    }
    unsupported: ClassVar[dict[str, str]] = {
        "regression": "it distils a softmax over the outputs, which regression outputs are "
        "not (over one output it is constant, and lwf would train as finetune); use der, which "
        "matches the old model's raw outputs, or replay"
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        # No learned state to checkpoint: the teacher is the model as it was when the task
        # started. On resume, weights are restored before the next task's before_task, which
        # snapshots the teacher from them, exactly as the uninterrupted run did.
        self._teacher: nn.Module | None = None
        self._old_classes: torch.Tensor | None = None

    def setup(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        self.check(ctx.stream)
        return model

    def before_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        self._teacher, self._old_classes = None, None
        if ctx.task_index == 0 or self.alpha == 0:
            return model
        teacher = copy.deepcopy(ctx.unwrap(model))
        teacher.eval()
        teacher.requires_grad_(False)
        self._teacher = teacher
        earlier = [t.classes for t in ctx.stream.tasks[: ctx.task_index]]
        if ctx.stream.setting != "domain_il" and all(c is not None for c in earlier):
            old = sorted({c for classes in earlier for c in classes})
            if len(old) < (ctx.stream.n_outputs or 0):
                self._old_classes = torch.tensor(old, device=ctx.device)
        return model

    def loss(
        self, loss: torch.Tensor, out: Any, batch: dict[str, torch.Tensor], ctx: TaskContext
    ) -> torch.Tensor:
        if self._teacher is None:
            return loss
        with torch.no_grad():
            teacher = ctx.logits(ctx.forward(self._teacher, batch))
        student = ctx.logits(out)
        valid = None
        if ctx.objective.name == "causal_lm":
            # Position t predicts token t + 1; score the positions whose target is not padding.
            teacher, student = teacher[:, :-1], student[:, :-1]
            labels = batch.get("labels")
            valid = (
                labels[:, 1:] != -100 if labels is not None else batch["attention_mask"][:, 1:] > 0
            )
        elif self._old_classes is not None:
            teacher, student = teacher[..., self._old_classes], student[..., self._old_classes]
        return loss + self.alpha * distillation_loss(student, teacher, self.temperature, valid)

    def after_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        self._teacher = None  # free the copy between tasks
        return model
