"""Synaptic Intelligence: importance from each weight's share of the loss decrease in training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from retain.strategies import register
from retain.strategies.importance import nbytes
from retain.strategies.penalty import FAILS_IN_CLASS_IL, Penalized, trainable

if TYPE_CHECKING:
    from torch import nn

    from retain.strategies.context import TaskContext


@register("si", reference_url="https://arxiv.org/abs/1703.04200")
@dataclass(repr=False)  # keep Strategy.__repr__: only non-default fields
class SynapticIntelligence(Penalized):
    """Synaptic Intelligence: penalise drift of weights that contributed most to past loss decrease.

    While a task trains, every step adds ``-g * delta_theta`` per weight to a running path integral
    omega (the weight's contribution to the drop in loss; with plain SGD this is ``lr * g^2``,
    mammoth's form). At the end of the task ``Omega += max(omega / (Delta^2 + xi), 0)``, where
    Delta is how far the weight moved over the task, the weights are stored as the anchor theta*
    and omega restarts. Later tasks add ``c * sum_i Omega_i (theta_i - theta*_i)^2`` (no 1/2, as
    mammoth). Omega is a sum over tasks. g is the gradient the optimizer applies (after clipping
    and other strategies' gradient edits) of the whole loss, penalty included (as mammoth; the
    paper's code used the task loss alone). Per step: four fused kernels; memory: about eight
    float32 copies of the trainable weights.

    Args:
        c: Penalty strength. Larger keeps old tasks better and learns new ones worse.
        xi: Damping added to Delta^2 so weights that barely moved over a task do not get huge
            importance; in the units of the weights squared (mammoth: 0.9 to 1.0).
        clip_value: Clip every gradient element to [-clip_value, clip_value] before the step
            (mammoth clips to 1.0 in SI; this is part of its published setting). It changes the
            update itself, not only omega. None: no clipping.

    Reference: Zenke, Poole and Ganguli, "Continual Learning Through Synaptic Intelligence" (ICML
    2017); mammoth's ``models/si.py``.
    """

    c: float = field(default=0.5, metadata={"ge": 0})
    xi: float = field(default=1.0, metadata={"gt": 0})  # keeps Omega finite
    clip_value: float | None = field(default=1.0, metadata={"gt": 0})

    known_failures: ClassVar[dict[str, str]] = {"class_il": FAILS_IN_CLASS_IL}
    strength: ClassVar[str] = "c"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.importance_: dict[str, torch.Tensor] = {}  # Omega, summed over tasks
        self.anchor_: dict[str, torch.Tensor] = {}  # theta* at the end of the last task
        self._names: list[str] = []
        self._params: list[torch.Tensor] = []
        # This task's path integral (learned state: a run resumed inside a task continues it).
        self.omega_: list[torch.Tensor] = []
        self._grad: list[torch.Tensor] = []  # this step's gradient
        self._prev: list[torch.Tensor] = []  # weights before this step
        self._start: list[torch.Tensor] = []

    def setup(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        if ctx.grads_are_scaled:
            raise ValueError(
                "si multiplies every step's gradient by that step's change of the weights, and "
                "the fp16 loss scaler skips the steps whose gradients overflow (inf times 0 is "
                "NaN); use train.mixed_precision=bf16 or no"
            )
        return model

    def before_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        params = trainable(ctx.unwrap(model))
        self._names, self._params = list(params), list(params.values())
        self._start = [p.detach().float().clone() for p in self._params]
        self.omega_ = [torch.zeros_like(p) for p in self._start]
        self._prev = [torch.zeros_like(p) for p in self._start]
        return model

    def after_backward(self, model: nn.Module, ctx: TaskContext) -> None:
        super().after_backward(model, ctx)  # the penalty's gradient, when not through the loss
        if self.clip_value is not None:
            torch.nn.utils.clip_grad_value_(self._params, self.clip_value)
        # References, not copies: later in-place edits (A-GEM, train.grad_clip) are seen, so omega
        # integrates the gradient the optimizer applies. The loop frees .grad (set_to_none) after
        # the step instead of zeroing it, so the tensors still hold it in after_step.
        self._grad = [torch.zeros_like(p) if p.grad is None else p.grad for p in self._params]
        torch._foreach_copy_(self._prev, [p.detach() for p in self._params])

    def after_step(self, model: nn.Module, ctx: TaskContext) -> None:
        torch._foreach_sub_(self._prev, [p.detach().float() for p in self._params])  # -delta
        torch._foreach_addcmul_(self.omega_, [g.float() for g in self._grad], self._prev)
        self._grad = []

    def after_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        self.consolidate(
            {
                n: (omega / ((p.detach().float() - start) ** 2 + self.xi)).clamp_min(0.0)
                for n, p, start, omega in zip(self._names, self._params, self._start, self.omega_)
            },
            ctx.unwrap(model),
        )
        self.omega_ = []  # restarts with the next task: not kept in its checkpoint
        return model

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self._params:  # inside a task (a mid-task checkpoint): onto the weights' devices
            self.omega_ = [w.to(p.device) for w, p in zip(self.omega_, self._params)]

    def stats(self) -> dict[str, Any]:
        return {
            "importance_bytes": nbytes(self.importance_) + nbytes(self.anchor_),
            **self.penalty_stats(),
        }
