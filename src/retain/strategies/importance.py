"""Per-sample gradient statistics: how important each weight is to what a task learned.

The importance of the weight-regularisation strategies (EWC's Fisher diagonal, MAS) is a mean over
samples of a per-sample gradient; :func:`per_sample_importance` computes it for any model and any
per-sample loss, and :mod:`retain.strategies.penalty` turns it into a penalty. Per-sample statistics ``mean_n  v_n * |d loss_n / d theta|^p`` (p = 2: a Fisher diagonal, p = 1:
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

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from retain.strategies.penalty import trainable

if TYPE_CHECKING:
    from retain.data.stream import TensorData
    from retain.strategies.context import TaskContext

Batch = dict[str, torch.Tensor]
#: (out, batch) -> (batch with the labels to differentiate, per-sample weights or None); no grad.
Prepare = Callable[[Any, Batch], "tuple[Batch, torch.Tensor | None]"]
#: (out, batch) -> per-sample losses [N] (differentiable).
SampleLoss = Callable[[Any, Batch], torch.Tensor]
METHODS = ("auto", "linear", "vmap", "loop")

__all__ = ["METHODS", "nbytes", "per_sample_importance", "subset", "trainable"]


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

    hooks = [
        m.register_forward_hook(lambda _m, inp, out, k=k: record(k, inp, out))
        for k, m in linears.items()
    ]
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
    model: nn.Module,
    ctx: TaskContext,
    data: TensorData,
    sample_loss: SampleLoss,
    prepare: Prepare | None = None,
    power: int = 2,
    method: str = "auto",
    batch_size: int | None = None,
) -> tuple[dict[str, torch.Tensor], str]:
    """``mean_n  v_n * |d sample_loss_n / d theta|^power`` for every trainable parameter.

    ``prepare`` picks the labels to differentiate and the weights ``v_n`` from a forward pass
    (sampled labels, the model's probability of the true label). The sums and the sample count are
    all-reduced, so every process returns the same statistics. Returns them (float32, on the
    parameters' device) and the method used.
    """
    params = trainable(model)
    names = list(params)
    method, linears = _resolve_method(model, names, method)
    chunk = batch_size or _chunk_size(params, method)
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    per_sample_grads = _vmap_grads(model, ctx, sample_loss)
    detached = {f"model.{n}": p.detach() for n, p in params.items()}
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
                    return per_sample_importance(
                        model, ctx, data, sample_loss, prepare, power, "vmap", batch_size
                    )
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
            _loop_pass(model, ctx, params, batch, weight, sample_loss, power, acc)
    finally:
        model.train(was_training)
    return _mean_over_processes(acc, count, ctx), method


def _resolve_method(
    model: nn.Module, names: list[str], method: str
) -> tuple[str, dict[str, nn.Linear] | None]:
    """``auto`` becomes ``linear`` where every trainable parameter is in an ``nn.Linear``, else
    ``vmap``; returns the method and the Linears by module name (None unless ``linear``)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    linears = _linears(model, names) if method in ("auto", "linear") else None
    if method == "auto":
        method = "linear" if linears is not None else "vmap"
    if method == "linear" and linears is None:
        raise ValueError("method 'linear' needs every trainable parameter to be in an nn.Linear")
    return method, linears


def _chunk_size(params: dict[str, torch.Tensor], method: str) -> int:
    if method == "linear":
        return 1024
    # vmap materialises chunk x n_params gradients: keep that near 2**25 floats (128 MB).
    n_params = sum(p.numel() for p in params.values())
    return max(1, min(256, 2**25 // max(n_params, 1)))


def _vmap_grads(model: nn.Module, ctx: TaskContext, sample_loss: SampleLoss) -> Callable:
    """``(parameters, batch) -> {"model.<name>": per-sample gradients [N, *shape]}``."""
    call = _Call(model, ctx.forward)

    def one(p: dict[str, torch.Tensor], sample: Batch) -> torch.Tensor:
        b = {k: v.unsqueeze(0) for k, v in sample.items()}
        return sample_loss(torch.func.functional_call(call, p, (b,)), b)[0]

    return torch.func.vmap(torch.func.grad(one), in_dims=(None, 0))


def _loop_pass(
    model: nn.Module,
    ctx: TaskContext,
    params: dict[str, torch.Tensor],
    batch: Batch,
    weight: torch.Tensor | None,
    sample_loss: SampleLoss,
    power: int,
    acc: dict[str, torch.Tensor],
) -> None:
    """One ``autograd.grad`` per sample of ``batch``, added into ``acc``."""
    names = list(params)
    for i in range(len(next(iter(batch.values())))):
        b = {k: v[i : i + 1] for k, v in batch.items()}
        grads = torch.autograd.grad(
            sample_loss(ctx.forward(model, b), b)[0],
            list(params.values()),
            materialize_grads=True,
        )
        _accumulate(
            acc,
            names,
            [g.unsqueeze(0) for g in grads],
            None if weight is None else weight[i : i + 1],
            power,
        )


def _mean_over_processes(
    acc: dict[str, torch.Tensor], count: torch.Tensor, ctx: TaskContext
) -> dict[str, torch.Tensor]:
    """The sums over every process's samples divided by their count, in one all-reduce."""
    if ctx.world_size == 1:  # in place: the flat copy below would be two more copies of the model
        n = max(float(count), 1.0)
        for t in acc.values():
            t.div_(n)
        return acc
    flat = torch.cat([count.view(1)] + [t.view(-1) for t in acc.values()])
    flat = ctx.all_reduce(flat, op="sum")
    flat = flat[1:] / flat[0].clamp_min(1.0)
    out, offset = {}, 0
    for n, t in acc.items():
        out[n] = flat[offset : offset + t.numel()].view_as(t).clone()
        offset += t.numel()
    return out
