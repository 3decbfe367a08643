"""A plane in parameter space, and the losses on it, computed for many points at once.

A point of the plane at coordinates ``(x, y)`` is ``origin + x * u + y * v`` for every tensor the
model trains. Through three models θ₁, θ₂, θ₃ (:func:`plane_through`), ``u`` and ``v`` are the
Gram-Schmidt orthonormal basis of ``(θ₂ - θ₁, θ₃ - θ₁)`` over all trainable parameters taken as
one vector, so distances and angles on the plane are those of parameter space; θ₁ sits at
``(0, 0)``, θ₂ at ``(|θ₂ - θ₁|, 0)`` and θ₃ above the x-axis. :func:`random_plane` is the other
kind: two random directions around one model, filter-normalised (Li et al. 2018,
https://arxiv.org/abs/1712.09913).

State that is not a parameter (BatchNorm's running mean and variance) is not part of the basis;
on a plane through three models it is carried along affinely, so that each of the three points
has exactly its own model's statistics and the statistics in between are the matching mixture
(a buffer that is never negative in the three models is clamped at 0 where the plane
extrapolates it). Integer buffers (BatchNorm's batch counter) are not touched. On a random plane
the buffers stay the model's.

:class:`Evaluator` scores a batch of points in one call: ``torch.func.functional_call`` under
``torch.func.vmap`` over the points, so an MLP's layers become batched matrix products over the
grid. Models that ``vmap`` cannot run are scored one point at a time (said in ``how``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from retain.objectives import logits_of, masked

if TYPE_CHECKING:
    from retain.data.stream import TensorData

Tensors = dict[str, torch.Tensor]

# Elements of model state built at once for a chunk of points (2**25 float32 = 128 MB): an MLP of
# 0.5 M parameters is scored 64 points at a time, a 135 M-parameter LM one at a time.
STATE_BUDGET = 2**25
MAX_POINTS = 64
# The largest logits tensor one call makes, as in retain.eval.evaluator.
LOGITS_BUDGET = 2**26


def dot(a: Tensors, b: Tensors, names: tuple[str, ...]) -> float:
    """The dot product of two models over ``names``, accumulated in float64."""
    return float(sum((a[n].double() * b[n].double()).sum() for n in names))


def diff(a: Tensors, b: Tensors) -> Tensors:
    return {n: a[n].float() - b[n].float() for n in a}


@dataclass
class Plane:
    """``origin + x * u + y * v`` for every tensor of ``origin``; ``params`` names the tensors
    the basis is orthonormal over (the rest are buffers carried along)."""

    origin: Tensors
    u: Tensors
    v: Tensors
    params: tuple[str, ...]
    nonneg: frozenset[str] = frozenset()

    def at(self, xy: torch.Tensor, names: list[str] | None = None) -> Tensors:
        """The models at ``xy`` (``[G, 2]``), each tensor stacked to ``[G, *shape]`` (only
        ``names``, when given)."""
        xy = xy.to(torch.float32).reshape(-1, 2)
        out = {}
        for n in self.origin if names is None else names:
            o = self.origin[n]
            shape = (-1,) + (1,) * o.ndim
            x, y = xy[:, 0].reshape(shape).to(o.device), xy[:, 1].reshape(shape).to(o.device)
            t = torch.addcmul(torch.addcmul(o.float(), x, self.u[n]), y, self.v[n])
            out[n] = (t.clamp_min(0) if n in self.nonneg else t).to(o.dtype)
        return out

    def project(self, theta: Tensors) -> tuple[float, float, float]:
        """``(x, y, distance)``: the coordinates of ``theta``'s orthogonal projection onto the
        plane and its distance to the plane, over the parameters."""
        d = {n: theta[n].double() - self.origin[n].double() for n in self.params}
        u = {n: self.u[n].double() for n in self.params}
        v = {n: self.v[n].double() for n in self.params}
        x, y = dot(d, u, self.params), dot(d, v, self.params)
        rest = sum(float(((d[n] - x * u[n] - y * v[n]) ** 2).sum()) for n in self.params)
        return x, y, math.sqrt(max(rest, 0.0))


def plane_through(
    t1: Tensors, t2: Tensors, t3: Tensors, params: tuple[str, ...]
) -> tuple[Plane, list[tuple[float, float]]]:
    """The plane through three models and their coordinates on it: ``[(0, 0), (a, 0), (b, c)]``
    with ``a = |θ₂ - θ₁|`` and ``c > 0``.

    Raises ValueError when the three are on one line (θ₂ = θ₁, or θ₃ on the line through them).
    """
    d1, d2 = diff(t2, t1), diff(t3, t1)
    a = math.sqrt(dot(d1, d1, params))
    if a == 0.0:
        raise ValueError("the first two models are the same point")
    u = {n: (d1[n].double() / a).float() for n in d1}
    b = dot(d2, u, params)
    w = {n: d2[n].double() - b * u[n].double() for n in d2}
    c = math.sqrt(dot(w, w, params))
    if c <= 1e-6 * max(a, math.sqrt(dot(d2, d2, params))):
        raise ValueError("the third model lies on the line through the first two")
    v = {n: (w[n] / c).float() for n in w}
    # Buffers: the affine map with buffer(0,0) = θ₁'s, buffer(a,0) = θ₂'s, buffer(b,c) = θ₃'s.
    for n in t1:
        if n in params:
            continue
        bu = d1[n].double() / a
        u[n] = bu.float()
        v[n] = ((d2[n].double() - b * bu) / c).float()
    nonneg = frozenset(
        n for n in t1 if n not in params and all(bool((t[n] >= 0).all()) for t in (t1, t2, t3))
    )
    origin = {n: t.detach().clone() for n, t in t1.items()}
    return Plane(origin, u, v, params, nonneg), [(0.0, 0.0), (a, 0.0), (b, c)]


def random_plane(theta: Tensors, params: tuple[str, ...], seed: int = 0) -> Plane:
    """Two Gaussian directions around ``theta``, filter-normalised (Li et al. 2018, section 4):
    each filter (row along the first dimension) of a weight of two or more dimensions is scaled
    to the norm of the same filter of ``theta``; biases and other one-dimensional parameters get
    no direction (the paper's choice: they would swamp the picture), nor do buffers."""
    g = torch.Generator().manual_seed(seed)
    dirs: list[Tensors] = [{}, {}]
    for d in dirs:
        for n, t in theta.items():
            if n not in params or t.ndim < 2:
                d[n] = torch.zeros_like(t, dtype=torch.float32)
                continue
            r = torch.randn(t.shape, generator=g)
            w = t.float().reshape(t.shape[0], -1)
            rr = r.reshape(t.shape[0], -1)
            scale = w.norm(dim=1, keepdim=True) / rr.norm(dim=1, keepdim=True).clamp_min(1e-12)
            d[n] = (rr * scale).reshape(t.shape)
    origin = {n: t.detach().clone() for n, t in theta.items()}
    return Plane(origin, dirs[0], dirs[1], params)


def barrier(losses: list[float]) -> float:
    """The loss barrier on a straight line between two models (Frankle et al. 2020,
    https://arxiv.org/abs/1912.05671): the largest excess of the loss at ``t`` over the linear
    interpolation ``(1 - t) L(0) + t L(1)`` of the end points, for ``losses`` at evenly spaced
    ``t`` from 0 to 1. 0 when the line never rises above the chord (linearly connected)."""
    k = len(losses) - 1
    if k < 1:
        return 0.0
    chord = [(1 - i / k) * losses[0] + (i / k) * losses[-1] for i in range(k + 1)]
    return max(0.0, *(lo - c for lo, c in zip(losses, chord)))


def loss_sum(kind: str, out: Any, batch: dict[str, torch.Tensor], mask: Any) -> torch.Tensor:
    """The summed loss of one batch, as the evaluator's ``loss`` score sums it."""
    if kind == "causal_lm":
        logits, labels = out.logits[:, :-1].float(), batch["labels"][:, 1:]
        return F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="sum")
    pred = logits_of(out).float()
    y = batch["y"]
    if kind == "regression":
        pred = pred.reshape(y.shape) if pred.numel() == y.numel() else pred
        return ((pred - y.float()) ** 2).sum()
    return F.cross_entropy(masked(pred, mask), y, reduction="sum")


def count(kind: str, batch: dict[str, torch.Tensor]) -> float:
    """What :func:`loss_sum` is divided by: rows, target values, or predicted tokens."""
    if kind == "causal_lm":
        return float((batch["labels"][:, 1:] != -100).sum())
    return float(batch["y"].numel() if kind == "regression" else len(batch["y"]))


class _Scorer(nn.Module):
    """``model`` and an objective as one module whose forward is a batch's summed loss, so that
    ``functional_call`` can swap in a point's tensors under the name ``model.<parameter>``."""

    def __init__(self, model: nn.Module, objective: Any, known: bool) -> None:
        super().__init__()
        self.model, self.objective, self.known = model, objective, known

    def forward(self, batch: dict[str, torch.Tensor], mask: Any) -> torch.Tensor:
        inputs = (
            {k: v for k, v in batch.items() if k != "labels"} if "input_ids" in batch else batch
        )
        out = self.objective.forward(self.model, inputs, task_known=self.known)
        return loss_sum(self.objective.name, out, batch, mask)


_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Identity, nn.Dropout)


def layer_chain(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """``(parameter-name prefix, layer)`` for a plain feed-forward network (an ``nn.Sequential``
    of Flatten, Linear and element-wise activations, or retain's MLP around one), else None."""
    from retain.models import MLP

    if type(model) is nn.Sequential:
        net, prefix = model, ""
    elif isinstance(model, MLP) and type(model).forward is MLP.forward:
        net, prefix = model.net, "net."
    else:
        return None
    layers = [(f"{prefix}{name}.", m) for name, m in net.named_children()]
    if not all(isinstance(m, (nn.Flatten, nn.Linear, *_ELEMENTWISE)) for _, m in layers):
        return None
    first = next((m for _, m in layers if not isinstance(m, nn.Flatten)), None)
    return layers if isinstance(first, nn.Linear) else None


class _Chain:
    """A feed-forward network's loss at many points of a plane with batched matrix products.

    The first linear layer sees the data, which no point changes, so its output is affine in the
    point's coordinates: ``X W(x, y)ᵀ = X W₀ᵀ + x X Uᵀ + y X Vᵀ``, three products computed once
    per batch instead of one per point (on MNIST's 784 inputs, two thirds of an MLP's work).
    Later layers are ``torch.baddbmm`` over the points."""

    def __init__(self, layers: list[tuple[str, nn.Module]], kind: str) -> None:
        self.layers, self.kind = layers, kind
        self.first = next(i for i, (_, m) in enumerate(layers) if isinstance(m, nn.Linear))
        self._plane: Plane | None = None
        self._pre: dict[int, tuple[torch.Tensor, ...]] = {}  # by batch (the batches are kept)

    def names(self) -> list[str]:
        """The tensors a point must supply: every linear layer's but the first."""
        return [
            f"{p}{k}"
            for i, (p, m) in enumerate(self.layers)
            if isinstance(m, nn.Linear) and i != self.first
            for k in ("weight", "bias")
            if getattr(m, k) is not None
        ]

    def _affine(self, plane: Plane, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if self._plane is not plane:
            self._plane, self._pre = plane, {}
        key = id(batch)
        if key not in self._pre:
            h = batch["x"]
            for _, m in self.layers[: self.first]:
                h = m(h)
            p, lin = self.layers[self.first]
            parts = []
            for d in (plane.origin, plane.u, plane.v):
                bias = d[f"{p}bias"].float() if lin.bias is not None else None
                parts.append(F.linear(h.float(), d[f"{p}weight"].float(), bias))
            # [origin's output (1, N*H)], [u's and v's (2, N*H)]: one addmm makes every point's.
            self._pre[key] = (parts[0].reshape(1, -1), torch.stack(parts[1:]).reshape(2, -1))
        return self._pre[key]

    def sums(
        self,
        plane: Plane,
        xy: torch.Tensor,
        states: Tensors,
        batch: dict[str, torch.Tensor],
        mask: Any,
    ) -> torch.Tensor:
        a, uv = self._affine(plane, batch)
        n = len(batch["x"])
        h = torch.addmm(a, xy.to(a), uv).reshape(len(xy), n, -1)
        for p, m in self.layers[self.first + 1 :]:
            if isinstance(m, nn.Linear):
                w = states[f"{p}weight"].float().transpose(1, 2)
                if m.bias is not None:
                    h = torch.baddbmm(states[f"{p}bias"].float().unsqueeze(1), h, w)
                else:
                    h = torch.bmm(h, w)
            elif isinstance(m, nn.ReLU):
                h = h.relu_()
            elif not isinstance(m, (nn.Dropout, nn.Identity)):  # dropout: evaluation mode
                h = m(h)
        g = h.shape[0]
        yb = batch["y"]
        if self.kind == "regression":
            pred = h.reshape(g, *yb.shape) if h[0].numel() == yb.numel() else h
            return ((pred - yb.float()) ** 2).reshape(g, -1).sum(1)
        logits = masked(h, mask).reshape(g * n, -1)
        ce = F.cross_entropy(logits, yb.repeat(g), reduction="none")
        return ce.reshape(g, n).sum(1)


class Evaluator:
    """Mean losses of many models (points) on fixed data sets, batched over the points.

    Args:
        model: the architecture (its own tensors fill what a point does not name: frozen ones).
        objective: the stream's objective (:func:`retain.objectives.make_objective`).
        sets: ``{name: data}``, each scored on the whole of it (pass a subsample).
        known: whether task-aware models get the task ids; class_mask: task-IL logit masks.
        device: where to score.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Any,
        sets: dict[str, TensorData],
        known: bool = False,
        class_mask: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.scorer = _Scorer(model.to(self.device).eval(), objective, known)
        self.kind = objective.name
        self.names = list(sets)
        self.vmap = True
        layers = layer_chain(model) if objective.name != "causal_lm" else None
        self.chain = _Chain(layers, objective.name) if layers is not None else None
        self.how = (
            "batched matrix products over the points (first layer affine in the coordinates)"
            if self.chain is not None
            else "torch.func.vmap over the points"
        )
        self._sets = sets
        self._cache: dict[tuple[int, int], list[dict[str, torch.Tensor]]] = {}
        self._mask = class_mask.to(self.device) if class_mask is not None else None
        self.counts = torch.tensor(
            [sum(count(self.kind, b) for b in self._batches(s, 4096)) for s in sets.values()],
            dtype=torch.float64,
        )

    def _batches(self, data: TensorData, rows: int) -> list[dict[str, torch.Tensor]]:
        key = (id(data), rows)
        if key not in self._cache:
            n = len(data)
            self._cache[key] = [
                {
                    k: v.to(self.device)
                    for k, v in data.batch(torch.arange(i, min(n, i + rows))).items()
                }
                for i in range(0, n, rows)
            ]
        return self._cache[key]

    def chunk(self, elements: int) -> int:
        """Points scored per call for models of ``elements`` varying elements."""
        return max(1, min(MAX_POINTS, STATE_BUDGET // max(1, elements)))

    def _rows(self, data: TensorData, points: int) -> int:
        ids = data.get("input_ids")
        vocab = getattr(getattr(self.scorer.model, "config", None), "vocab_size", None)
        if ids is None or not isinstance(vocab, int):
            return 512
        return max(1, min(512, LOGITS_BUDGET // max(1, points * ids.shape[-1] * vocab)))

    def sums(self, states: Tensors) -> torch.Tensor:
        """Summed losses ``[G, sets]`` of the ``G`` models stacked in ``states``."""
        g = next(iter(states.values())).shape[0]
        named = {f"model.{k}": v.to(self.device) for k, v in states.items()}
        out = torch.zeros(g, len(self.names), dtype=torch.float64)
        with torch.no_grad():
            for j, data in enumerate(self._sets.values()):
                for batch in self._batches(data, self._rows(data, g)):
                    mask = self._mask[batch["task"]] if self._mask is not None else None
                    out[:, j] += self._batch(named, batch, mask, g).double().cpu()
        return out

    def _batch(self, named: Tensors, batch: Any, mask: Any, g: int) -> torch.Tensor:
        from torch.func import functional_call, vmap

        def one(state: Tensors) -> torch.Tensor:
            return functional_call(self.scorer, state, (batch, mask))

        if self.vmap and g > 1:
            try:
                with warnings.catch_warnings():  # ops without a batching rule still run, looped
                    warnings.filterwarnings("ignore", "There is a performance drop")
                    return vmap(one)(named)
            except Exception:  # noqa: BLE001 - any model vmap cannot trace: score point by point
                self.vmap = False
                self.how = "one point at a time (the model does not run under torch.func.vmap)"
        return torch.stack([one({k: v[i] for k, v in named.items()}) for i in range(g)])

    def means(self, sums: torch.Tensor) -> torch.Tensor:
        """Mean losses ``[G, sets + 1]``: each set's, then the union's (``mix``): the sum over
        all sets divided by their total count, the loss joint training on them minimises."""
        per = sums / self.counts
        mix = sums.sum(1, keepdim=True) / self.counts.sum()
        return torch.cat([per, mix], 1)

    def at(self, plane: Plane, xy: torch.Tensor) -> torch.Tensor:
        """Mean losses ``[K, sets + 1]`` at the plane's points ``xy`` (``[K, 2]``)."""
        if self.chain is not None:
            return self.means(self._chain_sums(plane, xy))
        size = self.chunk(sum(t.numel() for t in plane.origin.values()))
        parts = [self.sums(plane.at(xy[i : i + size])) for i in range(0, len(xy), size)]
        return self.means(torch.cat(parts))

    def _chain_sums(self, plane: Plane, xy: torch.Tensor) -> torch.Tensor:
        assert self.chain is not None
        names = self.chain.names()
        size = self.chunk(sum(plane.origin[n].numel() for n in names))
        out = torch.zeros(len(xy), len(self.names), dtype=torch.float64)
        with torch.no_grad():
            for i in range(0, len(xy), size):
                part = xy[i : i + size].to(self.device)
                states = {n: v.to(self.device) for n, v in plane.at(part, names).items()}
                for j, data in enumerate(self._sets.values()):
                    for batch in self._batches(data, 512):
                        mask = self._mask[batch["task"]] if self._mask is not None else None
                        sums = self.chain.sums(plane, part, states, batch, mask)
                        out[i : i + size, j] += sums.double().cpu()
        return out

    def of(self, models: list[Tensors]) -> torch.Tensor:
        """Mean losses ``[K, sets + 1]`` of whole models (snapshots)."""
        if not models:
            return torch.zeros(0, len(self.names) + 1, dtype=torch.float64)
        size = self.chunk(sum(t.numel() for t in models[0].values()))
        parts = []
        for i in range(0, len(models), size):
            group = models[i : i + size]
            parts.append(self.sums({k: torch.stack([m[k] for m in group]) for k in group[0]}))
        return self.means(torch.cat(parts))
