"""Quadratic penalties on the weights: the base to build a weight-regularisation method on.

EWC, SI and MAS differ only in how they weigh each parameter; the penalty they add is the same
``scale * sum_i w_i (theta_i - c_i)^2``. :class:`QuadraticPenalty` computes it (and its gradient)
in a few fused kernels, and :class:`Penalized` is a :class:`~retain.strategies.base.Strategy` that
builds one per task and applies it. A new method subclasses :class:`Penalized`, names the field
that scales the penalty in ``strength`` and either fills ``importance_`` (with ``consolidate``)
or overrides ``build_penalty``. L2 to the previous task's weights (every weight equally
important), in full::

    from dataclasses import dataclass, field
    from typing import ClassVar

    import torch

    from retain.strategies import register
    from retain.strategies.penalty import Penalized, trainable


    @register("l2")
    @dataclass(repr=False)
    class L2(Penalized):
        '''Pull every weight towards its value at the end of the previous task.

        Args:
            lam: Penalty strength.
        '''

        lam: float = field(default=1.0, metadata={"ge": 0})  # bounds checked on construction
        strength: ClassVar[str] = "lam"

        def __post_init__(self) -> None:
            super().__post_init__()
            self.importance_: dict[str, torch.Tensor] = {}
            self.anchor_: dict[str, torch.Tensor] = {}

        def after_task(self, model, ctx):
            base = ctx.unwrap(model)
            self.importance_ = {}  # not summed over tasks: a weight of 1 each
            self.consolidate({n: torch.ones_like(p) for n, p in trainable(base).items()}, base)
            return model

``tests/strategies/test_penalty.py`` runs this class.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from retain.strategies.base import Strategy, fails_in_class_il

if TYPE_CHECKING:
    from retain.strategies.context import TaskContext

__all__ = [
    "FAILS_IN_CLASS_IL",
    "Penalized",
    "QuadraticPenalty",
    "anchored_penalty",
    "check_sgd_stable",
    "grad_path",
    "trainable",
]

#: ``known_failures["class_il"]`` of every method whose only effect is a weight penalty.
FAILS_IN_CLASS_IL = fails_in_class_il("regularising weights")


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters a penalty protects: those being trained (LoRA: only the adapters)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class _Quadratic(torch.autograd.Function):
    """``sum_i (r_i theta_i - r_i c_i)^2`` with gradient ``2 r_i (r_i theta_i - r_i c_i)``: one
    fused kernel per step instead of autograd's graph over every parameter."""

    @staticmethod
    def forward(fctx, penalty, *params):  # type: ignore[override]
        rdiff = torch._foreach_addcmul(penalty.neg_rc, penalty.roots, [p.float() for p in params])
        fctx.penalty, fctx.rdiff, fctx.dtypes = penalty, rdiff, [p.dtype for p in params]
        return torch.stack(torch._foreach_norm(rdiff)).square().sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(fctx, grad):  # type: ignore[override]
        grads = torch._foreach_mul(fctx.rdiff, fctx.penalty.roots)
        torch._foreach_mul_(grads, grad * 2.0)
        return (None, *[g.to(dt) for g, dt in zip(grads, fctx.dtypes)])


class QuadraticPenalty:
    """``scale * sum_i w_i (theta_i - c_i)^2 + const`` for fixed ``w >= 0`` and centres ``c``.

    Kept as ``r = sqrt(scale * w)`` and ``-r c``, built once per task, so that the value and the
    gradient are a few fused kernels whatever the number of parameters: written per parameter
    with autograd it cost more than a 784-100-100-10 MLP's own training step. Two ways to apply
    it (see ``Penalized``): ``add_to_grad()`` after backward (three kernels into a persistent
    buffer, nothing allocated) or ``__call__()`` for a differentiable value to add to the loss.
    Memory: three float32 copies of the covered parameters, four with the buffer.

    Past ``LEAN_NUMEL`` covered weights (language models) those copies would cost more than the
    kernels they save: the penalty then holds references to ``weights`` and ``centers`` (the
    strategy's importance and anchor, in the parameters' dtype) and works one parameter at a
    time, so it adds no copy of the model beyond one parameter's temporary.
    """

    #: Covered weights beyond which the penalty is kept ``lean`` (16.8 M: 64 MB per float32 copy).
    LEAN_NUMEL = 2**24

    def __init__(
        self,
        params: list[torch.Tensor],
        weights: list[torch.Tensor],
        centers: list[torch.Tensor],
        scale: float = 1.0,
        const: float = 0.0,
    ) -> None:
        self.params = params
        self.const = const  # added to the value (EWC's separate-mode remainder)
        self.via_grad = False  # how the owning strategy applies it (set by Penalized)
        self.lean = sum(p.numel() for p in params) > self.LEAN_NUMEL
        if self.lean:
            self.weights, self.centers, self.scale = weights, centers, scale
            return
        self.roots = [w.float().clamp_min(0.0).sqrt().mul_(math.sqrt(scale)) for w in weights]
        neg_rc = torch._foreach_mul(self.roots, [c.float() for c in centers])
        torch._foreach_neg_(neg_rc)
        self._flat: tuple[torch.Tensor, torch.Tensor] | None = None
        if neg_rc and len({t.device for t in neg_rc}) == 1:  # else (model parallel): per tensor
            # One contiguous copy per step is cheaper than one per parameter (~40 us/step here).
            flat = torch.cat([t.reshape(-1) for t in neg_rc])
            self._flat = (flat, torch.empty_like(flat))
            sizes = [t.numel() for t in neg_rc]
            neg_rc = [v.view_as(t) for v, t in zip(flat.split(sizes), neg_rc)]
            self._buffer = [v.view_as(t) for v, t in zip(self._flat[1].split(sizes), neg_rc)]
        else:
            self._buffer = [torch.empty_like(t) for t in neg_rc]
        self.neg_rc = neg_rc

    def __call__(self) -> torch.Tensor:
        if self.lean:
            value = self.scale * sum(
                (w * (p.float() - c).square()).sum()
                for p, w, c in zip(self.params, self.weights, self.centers)
            )
        else:
            value = _Quadratic.apply(self, *self.params)
        return value + self.const if self.const else value

    @torch.no_grad()
    def add_to_grad(self) -> None:
        """Add the gradient ``2 r (r theta - r c)`` into each parameter's ``.grad`` (created where
        None), outside autograd: a quarter of the cost of ``__call__`` + backward on a
        784-100-100-10 MLP step."""
        if self.lean:
            for p, w, c in zip(self.params, self.weights, self.centers):
                d = (p.float() - c).mul_(w).mul_(2.0 * self.scale)  # one parameter's temporary
                if p.grad is None:
                    p.grad = d.to(p.dtype)
                else:
                    p.grad.add_(d)
            return
        rdiff = self._rdiff()
        torch._foreach_mul_(rdiff, self.roots)
        grads = [p.grad for p in self.params]
        if all(g is not None and g.dtype == torch.float32 for g in grads):
            torch._foreach_add_(grads, rdiff, alpha=2.0)
            return
        for p, d in zip(self.params, rdiff):
            if p.grad is None:
                p.grad = (2.0 * d).to(p.dtype)
            else:
                p.grad.add_(d.to(p.grad.dtype), alpha=2.0)

    @torch.no_grad()
    def value(self) -> float:
        """The penalty's current value, without a graph."""
        if self.lean:
            return float(self()) if self.params else self.const
        rdiff = self._rdiff()
        return float(torch.stack(torch._foreach_norm(rdiff)).square().sum()) + self.const

    def _rdiff(self) -> list[torch.Tensor]:
        """``r theta - r c`` in the persistent buffer (no grad: callers run under no_grad)."""
        if self._flat is not None:
            self._flat[1].copy_(self._flat[0])
        else:
            torch._foreach_copy_(self._buffer, self.neg_rc)
        torch._foreach_addcmul_(self._buffer, self.roots, [p.detach().float() for p in self.params])
        return self._buffer


def grad_path(ctx: Any) -> bool:
    """Whether a penalty's gradient may be added to ``.grad`` after backward instead of through
    autograd: the gradients must be whole (not sharded by FSDP or DeepSpeed) and unscaled (the
    loop unscales fp16 gradients before the hooks where they are whole). Under DDP the gradients are already averaged over ranks when it runs, and the
    penalty's gradient is the same on every rank, so the sum is the same as through the loss."""
    return ctx.grads_are_local


class Penalized(Strategy):
    """Base of the strategies whose only training-time effect is a quadratic penalty (EWC, SI,
    MAS): subclasses build it in ``build_penalty``; this class caches it per model object and
    applies it.

    Where ``grad_path`` allows (one process, DDP), the penalty's gradient is added to ``.grad`` in
    ``after_backward``, before clipping and before later strategies' gradient hooks, rather than
    added to the loss: on P-MNIST's MLP a step then costs 7 % more instead of 28 %. The gradient is
    the same, but the training loss logged is the task loss alone (``stats()`` reports the penalty
    at the end of each task). Elsewhere (gradients sharded by FSDP or DeepSpeed) it goes through the
    loss.
    """

    #: SI, MAS: the hyperparameter that scales their one summed importance ``importance_``
    #: (anchored at ``anchor_``); EWC keeps its own state and overrides ``build_penalty``.
    strength: ClassVar[str] = ""

    def consolidate(self, new: dict[str, torch.Tensor], model: nn.Module) -> None:
        """After a task: ``importance_ += new``, the anchor becomes the current weights. Both are
        kept in each parameter's dtype (a bf16 model's importance takes what its weights take)
        and updated in place, so no second copy of either exists at any time (the cached
        penalty, which refers to them on a large model, is dropped first)."""
        self.invalidate()
        params = {n: p.detach() for n, p in model.named_parameters()}
        with torch.no_grad():
            for n, v in new.items():
                v = v.to(params[n].dtype) if n in params else v
                old = self.importance_.get(n)
                if old is None:
                    self.importance_[n] = v
                else:
                    old.add_(v.to(old.device))
            anchor = self.anchor_
            self.anchor_ = {}
            for n in self.importance_:
                if n not in params:
                    continue
                kept = anchor.get(n)
                if kept is not None and kept.shape == params[n].shape:
                    self.anchor_[n] = kept.copy_(params[n])
                else:
                    self.anchor_[n] = params[n].clone()

    def build_penalty(self, ctx: TaskContext) -> QuadraticPenalty | None:
        """The penalty for the current state, or None when there is nothing to protect yet."""
        scale = getattr(self, self.strength)
        if not self.importance_ or scale == 0:
            return None
        check_sgd_stable(self.name, self.strength, scale, list(self.importance_.values()), ctx)
        return anchored_penalty(
            trainable(ctx.unwrap(ctx.model)), self.importance_, self.anchor_, scale
        )

    def penalty(self, ctx: TaskContext) -> QuadraticPenalty | None:
        cached = self.__dict__.get("_penalty_cache")
        if cached is None or cached[0] is not ctx.model:
            penalty = self.build_penalty(ctx)
            if penalty is not None and not penalty.params:
                penalty = None
            if penalty is not None:
                penalty.via_grad = grad_path(ctx)
            cached = self._penalty_cache = (ctx.model, penalty)
        return cached[1]

    def invalidate(self) -> None:
        """Call when the importances or anchors change (after a task): records the penalty's value
        at the weights reached, for ``stats()``, then drops it."""
        cached = self.__dict__.get("_penalty_cache")
        if cached is not None and cached[1] is not None:
            self._penalty_end = cached[1].value()
        self._penalty_cache = None

    def loss(
        self, loss: torch.Tensor, out: Any, batch: dict[str, torch.Tensor], ctx: TaskContext
    ) -> torch.Tensor:
        penalty = self.penalty(ctx)
        return loss if penalty is None or penalty.via_grad else loss + penalty()

    def after_backward(self, model: nn.Module, ctx: TaskContext) -> None:
        penalty = self.penalty(ctx)
        if penalty is not None and penalty.via_grad:
            penalty.add_to_grad()

    def penalty_stats(self) -> dict[str, float]:
        """For ``stats()``: the penalty's value when the last task ended (none on the first)."""
        end = self.__dict__.get("_penalty_end")
        return {} if end is None else {"penalty_at_task_end": end}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._penalty_cache = None


def check_sgd_stable(
    strategy: str, param: str, scale: float, weights: list[torch.Tensor], ctx: Any
) -> None:
    """Refuse a quadratic penalty that plain SGD cannot follow.

    Under SGD without momentum the penalty alone updates ``theta - c`` by the factor
    ``1 - 2 * lr * scale * w`` per step: past ``w * scale * lr = 1`` it grows without bound and the
    loss turns NaN a few hundred steps later, reported as a learning-rate problem. The importances
    are known only after the first task, so this is checked when the penalty is built.
    """
    lr = ctx.sgd_lr  # None unless plain SGD without momentum
    if lr is None or not weights or scale <= 0:
        return
    top = max(float(w.max()) for w in weights)
    if 2 * lr * scale * top >= 2:
        from retain.errors import ConfigError

        limit = 1.0 / (lr * top)
        raise ConfigError(
            f"{strategy}: {param}={scale:g} is too large for SGD at lr={lr:g} (largest "
            f"importance {top:.3g}): the penalty alone would diverge; use {param} < {limit:.3g}"
        )


def anchored_penalty(
    params: dict[str, torch.Tensor],
    importance: dict[str, torch.Tensor],
    anchor: dict[str, torch.Tensor],
    scale: float,
) -> QuadraticPenalty:
    """``scale * sum_i Omega_i (theta_i - theta*_i)^2`` over the parameters that have an
    importance (float32 on each parameter's device); parameters added since, or frozen, are left
    out."""
    keep = [n for n in params if n in importance]
    return QuadraticPenalty(
        [params[n] for n in keep],
        [importance[n].to(params[n].device) for n in keep],
        [anchor[n].to(params[n].device) for n in keep],
        scale,
    )
