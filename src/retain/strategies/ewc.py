"""Elastic Weight Consolidation, separate (Kirkpatrick et al.) and online (Schwarz et al.)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from retain.errors import Unsupported
from retain.strategies import register
from retain.strategies.base import check_source
from retain.strategies.importance import nbytes, per_sample_importance, subset
from retain.strategies.penalty import (
    FAILS_IN_CLASS_IL,
    Penalized,
    QuadraticPenalty,
    check_sgd_stable,
    trainable,
)

if TYPE_CHECKING:
    from torch import nn

    from retain.data.stream import Stream
    from retain.strategies.context import TaskContext


def sample_labels(
    out: Any, batch: dict[str, torch.Tensor], ctx: TaskContext
) -> dict[str, torch.Tensor]:
    """Labels drawn from the model's own predictive distribution (next tokens for causal LMs)."""
    logits = ctx.masked_logits(ctx.logits(out).detach().float(), batch)
    if ctx.objective.name == "causal_lm":
        logits = logits[:, :-1]
    probs = torch.softmax(logits, -1).reshape(-1, logits.shape[-1])
    gen = ctx.generator if ctx.generator.device == probs.device else None
    drawn = torch.multinomial(probs, 1, generator=gen).view(logits.shape[:-1])
    if ctx.objective.name != "causal_lm":
        return {**batch, "y": drawn}
    labels = batch["labels"].clone()
    # Position t predicts token t + 1; padding (-100) stays out of the loss.
    labels[:, 1:] = torch.where(labels[:, 1:] != -100, drawn, labels[:, 1:])
    return {**batch, "labels": labels}


@torch.no_grad()
def _sum_into(
    total: dict[str, torch.Tensor],
    center: dict[str, torch.Tensor],
    fisher: dict[str, torch.Tensor],
    anchor: dict[str, torch.Tensor],
) -> float:
    """Add ``F (theta - a)^2`` to ``A (theta - m)^2`` in place, as one quadratic; returns the
    constant the sum leaves.

    ``A (theta - m)^2 + F (theta - a)^2 = A' (theta - m')^2 + A (m - m')^2 + F (a - m')^2`` with
    ``A' = A + F`` and ``m' = m + F (a - m) / A'``: the paper's one penalty per task, held as one
    F and one theta* (a copy of the model each) whatever the number of tasks. Computed in float32
    one parameter at a time, written into ``total`` and ``center`` in place.
    """
    const = 0.0
    for n, f in fisher.items():
        if n not in total:
            total[n], center[n] = f, anchor[n].clone()
            continue
        a_old, m_old = total[n].float(), center[n].float()
        f32, a = f.float().to(a_old.device), anchor[n].float().to(a_old.device)
        a_new = a_old + f32
        shift = torch.where(a_new > 0, f32 * (a - m_old) / a_new.clamp_min(1e-30), a - m_old)
        const += float((a_old * shift**2 + f32 * (a - m_old - shift) ** 2).sum())
        center[n].add_(shift.to(center[n].dtype))
        total[n].add_(f32.to(total[n].dtype))
    return const


@register("ewc", reference_url="https://arxiv.org/abs/1612.00796")
@dataclass(repr=False)  # keep Strategy.__repr__: only non-default fields
class EWC(Penalized):
    """Elastic Weight Consolidation: anchor each weight to its old value, as firmly as it mattered.

    After every task the diagonal of the Fisher information F (how sharply the model's predictions
    depend on each weight) is estimated on that task's training data, one gradient per sample.
    Training later tasks adds ``lam * sum_i F_i (theta_i - theta*_i)^2``, pulling the weights
    that mattered back towards their values theta* at the end of the earlier task. The penalty has
    no 1/2 (as mammoth's), so mammoth's ``e_lambda`` values carry over as ``lam``. Only trainable
    parameters are covered (with LoRA: the adapters, so F stays small), in each parameter's
    dtype. State: one F and one theta* (in ``separate`` mode the per-task penalties are summed
    into one quadratic, exactly: their summed F, its F-weighted mean theta* and a constant); no
    Fisher is computed after the run's last task, which no later task would
    use. ``stats()`` reports the bytes and the penalty's value at the end of each task. On one process or DDP the penalty's
    gradient is added after backward rather than through the loss (a quarter of the cost), so
    the logged training loss is the task loss alone.

    Args:
        lam: Penalty strength. Larger keeps old tasks better and learns new ones worse. F is a
            mean over samples; with SGD keep ``2 * lr * lam * max(F)`` below 2 or training
            diverges. mammoth: 0.7 on P-MNIST (lr 0.1), 90 on Seq-MNIST (lr 0.03).
        mode: ``separate``: one penalty per earlier task, each with its own F and theta* (the
            paper; held summed, so memory does not grow with tasks). ``online``: one running F, decayed by ``gamma`` and
            added to after each task, anchored at the latest weights (online EWC, mammoth's oEWC).
        gamma: Online mode: F <- gamma * F + F_new after each task; below 1 old tasks fade.
        fisher: Labels in the per-sample gradients. ``auto`` (default): ``sampled`` where the
            model predicts a distribution (classification, causal LMs), ``empirical`` for
            regression, whose outputs are not probabilities; the run's stats record which was
            used. ``sampled`` (because it estimates the true Fisher that EWC's derivation calls
            for): labels drawn from the model's own predictions, an unbiased Monte-Carlo
            estimate. ``empirical``: the observed
            labels; the "empirical Fisher", a biased approximation that is not a curvature estimate
            away from a perfect fit (Kunstner et al. 2019). ``empirical_weighted``: observed labels,
            each squared gradient weighted by the model's probability of that label (mammoth's
            ``ewc_on``; use it to reproduce mammoth). van de Ven (2025) compares the variants.
            Causal LMs sample next tokens; regression supports ``empirical`` only.
        fisher_samples: Training samples in the Fisher estimate, drawn at random (None: all of
            the task's, as mammoth). The default bounds its cost: on all samples the pass costs
            about half an epoch, while a mean of 5,000 squared gradients is already close to the
            full one (P-MNIST, 3 seeds: 77.3 +- 1.1 % on 5,000 vs 76.7 +- 1.3 % on all 60,000,
            at 1.1-1.3x finetune's time instead of 1.5x; BENCHMARKS.md). Models that
            ``torch.func.vmap`` cannot trace (transformers) take one backward per sample, so set
            a few hundred there.
        source: Also protect what the model knew before the first task: a stream source
            (``Stream.sources``, e.g. general English for a pretrained language model trained on
            Spanish) on which F is estimated before the first task, anchored at the initial
            (pretrained) weights. Without it the first task trains unpenalised: EWC on a single
            task is finetuning.

    Reference: Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks" (PNAS
    2017); Schwarz et al., "Progress & Compress" (ICML 2018) for online EWC; mammoth's
    ``models/ewc_on.py``.
    """

    lam: float = field(default=1.0, metadata={"ge": 0})
    mode: Literal["separate", "online"] = "separate"
    gamma: float = field(default=1.0, metadata={"ge": 0, "le": 1})
    fisher: Literal["auto", "sampled", "empirical", "empirical_weighted"] = "auto"
    fisher_samples: int | None = field(default=5000, metadata={"ge": 1})
    source: str | None = None

    known_failures: ClassVar[dict[str, str]] = {"class_il": FAILS_IN_CLASS_IL}

    def __post_init__(self) -> None:
        super().__post_init__()
        self.fisher_: list[dict[str, torch.Tensor]] = []  # one (older checkpoints: one per task)
        self.anchor_: list[dict[str, torch.Tensor]] = []  # theta* matching each F
        self.const_ = 0.0  # separate mode: the constant of the summed quadratic (_sum_into)
        self._last: dict[str, Any] = {}

    def fisher_for(self, objective: str) -> str:
        """The Fisher variant used on a stream of ``objective`` (``auto`` resolved)."""
        if self.fisher != "auto":
            return self.fisher
        return "empirical" if objective == "regression" else "sampled"

    def check(self, stream: Stream) -> None:
        super().check(stream)
        if self.source is not None:
            check_source("ewc", self.source, stream)
        if stream.objective == "regression" and self.fisher_for(stream.objective) != "empirical":
            raise Unsupported(
                f"strategy 'ewc' with fisher '{self.fisher}' needs class probabilities, and this "
                "stream's objective is regression; use fisher=empirical (what the default, auto, "
                "picks for regression)"
            )

    def setup(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        self.check(ctx.stream)
        return model

    def before_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        if self.source is None or ctx.task_index != 0 or self.fisher_:
            return model  # (a resumed run has its F already)
        self.invalidate()
        base = ctx.unwrap(model)
        weights = {n: p.detach() for n, p in base.named_parameters()}
        data = ctx.stream.sources[self.source]
        fisher = self.fisher_diagonal(base, ctx, data=data)
        self.fisher_ = [{n: f.to(weights[n].dtype) for n, f in fisher.items()}]
        self.anchor_ = [{n: weights[n].clone() for n in fisher}]
        return model

    def fisher_diagonal(
        self, model: nn.Module, ctx: TaskContext, method: str = "auto", data: Any = None
    ) -> dict[str, torch.Tensor]:
        """F on ``fisher_samples`` of ``data`` (default: the current task's training data),
        float32, all-reduced."""

        mode = self.fisher_for(ctx.objective.name)

        def prepare(out, batch):
            if mode == "sampled":
                return sample_labels(out, batch, ctx), None
            if mode == "empirical_weighted":  # exp(-CE) = p(observed label | x)
                return batch, torch.exp(-ctx.task_loss(out, batch, reduction="none").float())
            return batch, None

        data = subset(ctx.task.train if data is None else data, self.fisher_samples, ctx.generator)
        t0 = time.perf_counter()
        fisher, used = per_sample_importance(
            model,
            ctx,
            data,
            lambda out, b: ctx.task_loss(out, b, reduction="none"),
            prepare,
            power=2,
            method=method,
        )
        self._last = {
            "fisher": mode,
            "fisher_seconds": time.perf_counter() - t0,
            "fisher_method": used,
        }
        return fisher

    def after_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        # The penalty's value at the weights reached is recorded and its memory freed before the
        # Fisher pass; the state below is then updated in place (a copy of the model less each).
        self.invalidate()
        if ctx.is_last_task:  # no later task would be penalised with it
            self._last = {}
            return model
        base = ctx.unwrap(model)
        weights = {n: p.detach() for n, p in base.named_parameters()}
        # Stored in each parameter's dtype: a bf16 model's Fisher takes what its weights take.
        fisher = {n: f.to(weights[n].dtype) for n, f in self.fisher_diagonal(base, ctx).items()}
        if not self.fisher_:
            self.fisher_ = [fisher]
            self.anchor_ = [{n: weights[n].clone() for n in fisher}]
        elif self.mode == "online":  # F <- gamma F + F_new, anchored at the weights reached
            old, anchor = self.fisher_[0], self.anchor_[0]
            for f in old.values():
                f.mul_(self.gamma)
            for n, f in fisher.items():
                if n in old:
                    old[n].add_(f.to(old[n].device))
                else:
                    old[n] = f
            for n in old:
                if n in anchor and n in weights:
                    anchor[n].copy_(weights[n])
                elif n in weights:
                    anchor[n] = weights[n].clone()
        elif len(self.fisher_) == 1:  # separate: summed into one quadratic (see _sum_into)
            self.const_ += _sum_into(self.fisher_[0], self.anchor_[0], fisher, weights)
        else:  # a checkpoint that kept one F per task
            self.fisher_.append(fisher)
            self.anchor_.append({n: weights[n].clone() for n in fisher})
        return model

    def build_penalty(self, ctx: TaskContext) -> QuadraticPenalty | None:
        """``sum_t F_t (theta - a_t)^2 = A (theta - m)^2 + const`` per weight, with
        ``A = sum_t F_t`` and ``m = sum_t F_t a_t / A``: separate mode costs one quadratic per
        step, like online."""
        if not self.fisher_ or self.lam == 0:
            return None
        params = trainable(ctx.unwrap(ctx.model))
        kept, totals, centers, const = [], [], [], 0.0
        for n, p in params.items():
            # One task's F and theta* are used as they are (no copy: a large model's penalty
            # refers to them, see QuadraticPenalty.lean); several are combined in float32.
            fs = [f[n].to(p.device) for f in self.fisher_ if n in f]
            if not fs:
                continue
            anchors = [a[n].to(p.device) for f, a in zip(self.fisher_, self.anchor_) if n in f]
            if len(fs) == 1:
                total, center = fs[0], anchors[0]
            else:
                fs, anchors = [f.float() for f in fs], [a.float() for a in anchors]
                total = torch.stack(fs).sum(0)
                weighted = torch.stack([f * a for f, a in zip(fs, anchors)]).sum(0)
                center = torch.where(total > 0, weighted / total.clamp_min(1e-30), anchors[-1])
                const += float(sum((f * (a - center) ** 2).sum() for f, a in zip(fs, anchors)))
            kept.append(p)
            totals.append(total)
            centers.append(center)
        check_sgd_stable("ewc", "lam", self.lam, totals, ctx)
        const += self.const_
        return QuadraticPenalty(kept, totals, centers, self.lam, const=self.lam * const)

    def stats(self) -> dict[str, Any]:
        return {
            "fisher_bytes": nbytes(self.fisher_) + nbytes(self.anchor_),
            **({"fisher_source": self.source} if self.source else {}),
            **self._last,
            **self.penalty_stats(),
        }
