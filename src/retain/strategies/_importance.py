"""Shared by the weight-importance strategies (EWC, SI, MAS): per-sample gradient statistics and
the anchored quadratic penalty ``sum_i w_i (theta_i - c_i)^2``.

Per-sample statistics ``mean_n  v_n * |d loss_n / d theta|^p`` (p = 2: a Fisher diagonal, p = 1:
MAS) are computed three ways, fastest first, with identical results:

* ``linear``: every trainable parameter belongs to an ``nn.Linear`` applied once to a ``[N, in]``
  input (one row per sample) and used nowhere else (MLPs, linear heads; checked on the first
  batch, with no in-place change to a Linear's input or output afterwards; uses of a weight
  outside its module's ``forward`` are not detected). A sample's weight gradient is then the outer product
  ``g_n a_n^T``, so ``sum_n v_n |g_n a_n^T|^p = (v * |G|^p)^T |A|^p``: one batched forward, one
  backward to the layer outputs and one matmul per layer, never materialising per-sample
  gradients. That is about the arithmetic of one training epoch's forward and weight gradients,
  in 1024-sample chunks (measured on P-MNIST: about half an epoch's time at batch 128).
* ``vmap``: ``torch.func`` (``functional_call`` + ``vmap(grad)``) in chunks, for any model it can
  trace (convolutions, custom layers).
* ``loop``: one ``autograd.grad`` per sample, for models ``vmap`` cannot trace (transformers'
  attention-mask code branches on data). Correct but slow: limit the samples on such models.

All three evaluate the model in eval mode (no dropout; BatchNorm uses running statistics, which is
also what makes samples independent) and never touch ``.grad``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from retain.strategies.base import Strategy

if TYPE_CHECKING:
    from retain.data.stream import TensorData
    from retain.strategies.context import TaskContext

Batch = dict[str, torch.Tensor]
#: (out, batch) -> (batch with the labels to differentiate, per-sample weights or None); no grad.
Prepare = Callable[[Any, Batch], "tuple[Batch, torch.Tensor | None]"]
#: (out, batch) -> per-sample losses [N] (differentiable).
SampleLoss = Callable[[Any, Batch], torch.Tensor]
METHODS = ("auto", "linear", "vmap", "loop")


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters a penalty protects: those being trained (LoRA: only the adapters)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def subset(data: TensorData, n: int | None, generator: torch.Generator) -> TensorData:
    """``n`` samples drawn without replacement (all of them when ``n`` is None or too large)."""
    if n is None or n >= len(data):
        return data
    return data[torch.randperm(len(data), generator=generator)[:n].sort().values]


def nbytes(state: Any) -> int:
    """Bytes held by the tensors in nested lists and dicts."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(nbytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(nbytes(v) for v in state)
    return 0


class _Call(nn.Module):
    """Routes ``functional_call`` through ``ctx.forward`` (task ids, HF keyword arguments)."""

    def __init__(self, model: nn.Module, forward: Callable[[nn.Module, Batch], Any]) -> None:
        super().__init__()
        self.model = model
        self._forward = forward

    def forward(self, batch: Batch) -> Any:
        return self._forward(self.model, batch)


def _linears(model: nn.Module, names: list[str]) -> dict[str, nn.Linear] | None:
    """``{module name: Linear}`` if every name is the weight or bias of one Linear, else None
    (tied weights: a sample's gradient is then a sum of outer products)."""
    found, covered, seen = {}, set(), set()
    for mname, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, nn.Linear):
            for pname, p in m.named_parameters(recurse=False):
                if id(p) in seen:
                    return None
                seen.add(id(p))
                full = f"{mname}.{pname}" if mname else pname
                if full in names:
                    found[mname] = m
                    covered.add(full)
    return found if covered == set(names) else None


class _NotLinear(Exception):
    """A Linear was called twice, or on a sequence: per-sample gradients are not outer products."""


def _pow(t: torch.Tensor, power: int) -> torch.Tensor:
    t = t.detach().float()
    return t * t if power == 2 else t.abs()


def _linear_pass(model, linears, batch, prepare, sample_loss, power, acc, ctx) -> None:
    calls: list[tuple[str, torch.Tensor, torch.Tensor, int, int]] = []

    def record(k, inp, out):
        calls.append((k, inp[0], out, inp[0]._version, out._version))

    hooks = [m.register_forward_hook(lambda _m, inp, out, k=k: record(k, inp, out))
             for k, m in linears.items()]
    try:
        out = ctx.forward(model, batch)
    finally:
        for h in hooks:
            h.remove()
    n = len(next(iter(batch.values())))
    # One row per sample (not tokens flattened into rows), and neither tensor rewritten in place
    # after the hook saw it (an in-place ReLU would make the gradient w.r.t. ``out`` the
    # post-activation one).
    if len(calls) != len(linears) or any(
        a.dim() != 2 or len(a) != n or a._version != va or z._version != vz
        for _, a, z, va, vz in calls
    ):
        raise _NotLinear
    calls = [(k, a, z) for k, a, z, _, _ in calls]
    weight = None
    if prepare is not None:
        with torch.no_grad():
            batch, weight = prepare(out, batch)
    losses = sample_loss(out, batch)
    grads = torch.autograd.grad(losses.sum(), [z for _, _, z in calls])
    for (k, a, _), g in zip(calls, grads):
        g = _pow(g, power)
        if weight is not None:
            g = g * weight.float()[:, None]
        prefix = f"{k}." if k else ""
        if prefix + "weight" in acc:
            acc[prefix + "weight"] += g.T @ _pow(a, power)
        if prefix + "bias" in acc:
            acc[prefix + "bias"] += g.sum(0)


def _accumulate(acc, names, grads, weight, power) -> None:
    """Add per-sample gradients ``[N, *shape]`` (weights ``[N]`` or None) into ``acc``."""
    for n, g in zip(names, grads):
        g = _pow(g, power)
        if weight is not None:
            g = g * weight.float().view(-1, *[1] * (g.dim() - 1))
        acc[n] += g.sum(0)


def _batches(ctx: TaskContext, data: TensorData, size: int):
    """In order; one process reads slices (no gather), several their strides of the data."""
    if ctx.world_size > 1:
        yield from ctx.make_loader(data, batch_size=size)
        return
    for start in range(0, len(data), size):
        yield {k: v[start : start + size].to(ctx.device) for k, v in data.tensors.items()}


def per_sample_importance(
    model: nn.Module, ctx: TaskContext, data: TensorData, sample_loss: SampleLoss,
    prepare: Prepare | None = None, power: int = 2, method: str = "auto",
    batch_size: int | None = None,
) -> tuple[dict[str, torch.Tensor], str]:
    """``mean_n  v_n * |d sample_loss_n / d theta|^power`` for every trainable parameter.

    ``prepare`` picks the labels to differentiate and the weights ``v_n`` from a forward pass
    (sampled labels, the model's probability of the true label). The sums and the sample count are
    all-reduced, so every process returns the same statistics. Returns them (float32, on the
    parameters' device) and the method used.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    params = trainable(model)
    names = list(params)
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    linears = _linears(model, names) if method in ("auto", "linear") else None
    if method == "auto":
        method = "linear" if linears is not None else "vmap"
    if method == "linear" and linears is None:
        raise ValueError("method 'linear' needs every trainable parameter to be in an nn.Linear")
    n_params = sum(p.numel() for p in params.values())
    # vmap materialises chunk x n_params gradients: keep that near 2**25 floats (128 MB).
    vmap_chunk = max(1, min(256, 2**25 // max(n_params, 1)))
    chunk = batch_size or (1024 if method == "linear" else vmap_chunk)
    call = _Call(model, ctx.forward)
    detached = {f"model.{n}": p.detach() for n, p in params.items()}

    def one(p: dict[str, torch.Tensor], sample: Batch) -> torch.Tensor:
        b = {k: v.unsqueeze(0) for k, v in sample.items()}
        return sample_loss(torch.func.functional_call(call, p, (b,)), b)[0]

    per_sample_grads = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0))
    was_training = model.training
    model.eval()
    count = torch.zeros((), device=ctx.device)
    try:
        for batch in _batches(ctx, data, chunk):
            count += len(next(iter(batch.values())))
            if method == "linear":
                try:
                    _linear_pass(model, linears, batch, prepare, sample_loss, power, acc, ctx)
                    continue
                except _NotLinear:  # raised on the first batch, before anything was drawn
                    return per_sample_importance(model, ctx, data, sample_loss, prepare, power,
                                                 "vmap", batch_size)
            weight = None
            if prepare is not None:  # else no forward is needed before the gradients
                with torch.no_grad():
                    batch, weight = prepare(ctx.forward(model, batch), batch)
            if method == "vmap":
                try:
                    g = per_sample_grads(detached, batch)
                    _accumulate(acc, names, [g[f"model.{n}"] for n in names], weight, power)
                    continue
                except torch.OutOfMemoryError:
                    raise  # not a tracing failure: the loop would hide it behind hours of work
                except Exception:  # noqa: BLE001  vmap cannot trace it (data-dependent control
                    method = "loop"  # flow); the loop below still raises a genuine error
            for i in range(len(next(iter(batch.values())))):
                b = {k: v[i : i + 1] for k, v in batch.items()}
                grads = torch.autograd.grad(sample_loss(ctx.forward(model, b), b)[0],
                                            list(params.values()), materialize_grads=True)
                _accumulate(acc, names, [g.unsqueeze(0) for g in grads],
                            None if weight is None else weight[i : i + 1], power)
    finally:
        model.train(was_training)
    flat = torch.cat([count.view(1)] + [t.view(-1) for t in acc.values()])
    flat = ctx.all_reduce(flat, op="sum")
    flat = flat[1:] / flat[0].clamp_min(1.0)
    out, offset = {}, 0
    for n, t in acc.items():
        out[n] = flat[offset : offset + t.numel()].view_as(t).clone()
        offset += t.numel()
    return out, method


# ------------------------------------------------------------------ quadratic penalty


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
    """

    def __init__(self, params: list[torch.Tensor], weights: list[torch.Tensor],
                 centers: list[torch.Tensor], scale: float = 1.0, const: float = 0.0) -> None:
        self.params = params
        self.const = const          # added to the value (EWC's separate-mode remainder)
        self.via_grad = False       # how the owning strategy applies it (set by Penalized)
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
        value = _Quadratic.apply(self, *self.params)
        return value + self.const if self.const else value

    @torch.no_grad()
    def add_to_grad(self) -> None:
        """Add the gradient ``2 r (r theta - r c)`` into each parameter's ``.grad`` (created where
        None), outside autograd: a quarter of the cost of ``__call__`` + backward on a
        784-100-100-10 MLP step."""
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
    autograd: the gradients must be whole (not sharded by FSDP or DeepSpeed) and unscaled (no fp16
    loss scaler). Under DDP the gradients are already averaged over ranks when it runs, and the
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
    at the end of each task). Elsewhere (fp16 loss scaling, sharded gradients) it goes through the
    loss.
    """

    #: SI, MAS: the hyperparameter that scales their one summed importance ``importance_``
    #: (anchored at ``anchor_``); EWC keeps its own state and overrides ``build_penalty``.
    strength: ClassVar[str] = ""

    def consolidate(self, new: dict[str, torch.Tensor], model: nn.Module) -> None:
        """After a task: ``importance_ += new``, the anchor becomes the current weights."""
        for n, v in new.items():
            old = self.importance_.get(n)
            self.importance_[n] = v if old is None else old.to(v.device) + v
        self.anchor_ = {n: p.detach().clone() for n, p in model.named_parameters()
                        if n in self.importance_}
        self.invalidate()

    def build_penalty(self, ctx: TaskContext) -> QuadraticPenalty | None:
        """The penalty for the current state, or None when there is nothing to protect yet."""
        scale = getattr(self, self.strength)
        if not self.importance_ or scale == 0:
            return None
        check_sgd_stable(self.name, self.strength, scale, list(self.importance_.values()), ctx)
        return anchored_penalty(trainable(ctx.unwrap(ctx.model)), self.importance_, self.anchor_,
                                scale)

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

    def loss(self, loss: torch.Tensor, out: Any, batch: dict[str, torch.Tensor],
             ctx: TaskContext) -> torch.Tensor:
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


def check_sgd_stable(strategy: str, param: str, scale: float,
                     weights: list[torch.Tensor], ctx: Any) -> None:
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


def anchored_penalty(params: dict[str, torch.Tensor], importance: dict[str, torch.Tensor],
                     anchor: dict[str, torch.Tensor], scale: float) -> QuadraticPenalty:
    """``scale * sum_i Omega_i (theta_i - theta*_i)^2`` over the parameters that have an
    importance (float32 on each parameter's device); parameters added since, or frozen, are left
    out."""
    keep = [n for n in params if n in importance]
    return QuadraticPenalty([params[n] for n in keep],
                            [importance[n].to(params[n].device) for n in keep],
                            [anchor[n].to(params[n].device) for n in keep], scale)
