"""Memory Aware Synapses: importance from how sensitive the output is to each weight, no labels."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from retain.strategies import register
from retain.strategies.importance import nbytes, per_sample_importance, subset
from retain.strategies.penalty import FAILS_IN_CLASS_IL, Penalized

if TYPE_CHECKING:
    from torch import nn

    from retain.strategies.context import TaskContext


def squared_output_norm(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``||f(x)||^2`` per sample; for sequences, its mean over the attended positions."""
    sq = logits.float().square()
    if sq.dim() == 2:
        return sq.sum(-1)
    sq = sq.sum(-1).flatten(1)
    mask = batch.get("attention_mask")
    if mask is None or mask.shape != sq.shape:
        return sq.mean(1)
    mask = mask.float()
    return (sq * mask).sum(1) / mask.sum(1).clamp_min(1.0)


@register("mas", reference_url="https://arxiv.org/abs/1711.09601")
@dataclass(repr=False)  # keep Strategy.__repr__: only non-default fields
class MAS(Penalized):
    """Memory Aware Synapses: anchor the weights the model's outputs are most sensitive to.

    After each task, a weight's importance is the mean over samples of the absolute gradient of
    the squared L2 norm of the model's output (the logits) with respect to it: how much the
    learned function changes when that weight moves. No labels are needed, so any unlabelled data
    from the task would do (here: the task's training inputs). Importances are summed over tasks
    (as online EWC with gamma 1 and as SI; the MAS code's running average only rescales ``lam``
    by the number of tasks). Later tasks add ``lam * sum_i Omega_i (theta_i - theta*_i)^2`` with
    theta* the weights at the end of the last task. Importances are kept in each parameter's
    dtype and not computed after the run's last task. ``stats()`` reports the memory held.

    Args:
        lam: Penalty strength. Larger keeps old tasks better and learns new ones worse; its scale
            follows the logits' magnitude (Omega reached ~110 on Seq-MNIST's MLP, EWC's Fisher
            0.03), so the default is small: with plain SGD, ``2 * lr * lam * max(Omega)`` must
            stay below 2 or the penalty diverges, and retain stops with the largest stable value.
        samples: Training samples per task used to estimate the importance, drawn at random
            (None: all of them). As EWC's ``fisher_samples``, 5,000 bounds the pass's cost (about
            half an epoch on all samples). Models ``torch.func.vmap`` cannot trace (transformers)
            take one backward per sample: set a few hundred there.

    Reference: Aljundi et al., "Memory Aware Synapses: Learning what (not) to forget" (ECCV 2018).
    """

    lam: float = field(default=0.1, metadata={"ge": 0})
    samples: int | None = field(default=5000, metadata={"ge": 1})

    known_failures: ClassVar[dict[str, str]] = {"class_il": FAILS_IN_CLASS_IL}
    strength: ClassVar[str] = "lam"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.importance_: dict[str, torch.Tensor] = {}  # Omega, summed over tasks
        self.anchor_: dict[str, torch.Tensor] = {}  # theta* at the end of the last task
        self._last: dict[str, Any] = {}

    def importance(
        self, model: nn.Module, ctx: TaskContext, method: str = "auto"
    ) -> dict[str, torch.Tensor]:
        """Omega on ``samples`` of the current task's training data (float32, all-reduced)."""
        data = subset(ctx.task.train, self.samples, ctx.generator)
        t0 = time.perf_counter()
        omega, used = per_sample_importance(
            model,
            ctx,
            data,
            lambda out, b: squared_output_norm(ctx.logits(out), b),
            power=1,
            method=method,
        )
        self._last = {"importance_seconds": time.perf_counter() - t0, "importance_method": used}
        return omega

    def after_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        self.invalidate()  # the penalty's value recorded and its memory freed before the pass
        if ctx.is_last_task:  # no later task would be penalised with it
            self._last = {}
            return model
        base = ctx.unwrap(model)
        self.consolidate(self.importance(base, ctx), base)
        return model

    def stats(self) -> dict[str, Any]:
        return {
            "importance_bytes": nbytes(self.importance_) + nbytes(self.anchor_),
            **self._last,
            **self.penalty_stats(),
        }
