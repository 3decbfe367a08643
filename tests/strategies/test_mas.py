"""MAS: the importance is the mean absolute per-sample gradient of ||logits||^2 (checked against
a loop over samples), it sums over tasks, and on permuted digits MAS forgets less than finetune."""

from __future__ import annotations

import pytest
import torch
from conftest import task_ctx
from torch import nn

from retain.config import TrainConfig
from retain.models import MLP
from retain.strategies.mas import MAS


def slow_importance(model, x):
    out = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(x)):
        model.zero_grad()
        model(x[i : i + 1]).square().sum().backward()
        for n, p in model.named_parameters():
            out[n] += p.grad.abs()
    return {n: v / len(x) for n, v in out.items()}


@pytest.mark.parametrize("method", ["linear", "vmap", "loop"])
def test_importance_equals_a_loop_over_samples(digits_permuted, method):
    torch.manual_seed(0)
    model = MLP(64, 10, [32, 16])
    ctx = task_ctx(digits_permuted, n=40)
    expected = slow_importance(model, ctx.task.train.x)
    got = MAS().importance(model, ctx, method=method)
    for n, v in expected.items():
        torch.testing.assert_close(got[n], v, rtol=1e-4, atol=1e-8)


def test_importance_sums_over_tasks_and_the_penalty(digits_permuted):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.LayerNorm(8), nn.Linear(8, 10))
    mas = MAS(lam=3.0, samples=16)
    ctx0, ctx1 = task_ctx(digits_permuted, 0, model), task_ctx(digits_permuted, 1, model)
    mas.after_task(model, ctx0)
    first = {n: v.clone() for n, v in mas.importance_.items()}
    assert mas.stats()["importance_method"] == "vmap"
    mas.after_task(model, ctx1)
    second = MAS(samples=16).importance(model, task_ctx(digits_permuted, 1, model))
    for n in first:
        torch.testing.assert_close(mas.importance_[n], first[n] + second[n])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    got = mas.penalty(ctx1).value()
    want = 3.0 * sum(
        (mas.importance_[n] * (p - mas.anchor_[n]) ** 2).sum() for n, p in model.named_parameters()
    )
    assert got == pytest.approx(want.item(), rel=1e-5, abs=1e-9)


def test_out_of_memory_is_not_mistaken_for_an_untraceable_model(digits_permuted, monkeypatch):
    # Regression: any exception from vmap switched to one backward per sample, OOM included.
    def oom(*args, **kwargs):
        def raise_oom(*a, **k):
            raise torch.OutOfMemoryError("simulated")

        return raise_oom

    monkeypatch.setattr(torch.func, "vmap", oom)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.LayerNorm(8), nn.Linear(8, 10))
    with pytest.raises(torch.OutOfMemoryError):
        MAS(samples=8).importance(model, task_ctx(digits_permuted, 0, model), method="vmap")


def test_validation():
    for bad in ({"lam": -1}, {"samples": 0}):
        with pytest.raises(ValueError):
            MAS(**bad)


@pytest.mark.slow
def test_mas_forgets_less_than_finetune(digits_permuted, finetune_permuted, run_strategies):
    # Measured with seed 0: finetune forgetting 0.360 (avg 0.522); MAS lam=0.03 -> 0.219 (0.561).
    ft = finetune_permuted.metrics
    r = run_strategies(digits_permuted, [MAS(lam=0.03)]).metrics
    assert r.forgetting < ft.forgetting - 0.08
    assert r.avg_accuracy > ft.avg_accuracy - 0.03


def test_a_penalty_sgd_cannot_follow_is_refused_with_the_fix(digits_permuted, run_strategies):
    """Regression: MAS at lam=1 with SGD diverged to a NaN loss reported as a learning-rate
    problem; the cause is lam, and the largest stable value is known once Omega is."""
    from retain.errors import ConfigError
    from retain.strategies.mas import MAS

    with pytest.raises(
        ConfigError, match=r"mas: lam=1000 is too large for SGD at lr=0.05 .*use lam < "
    ):
        run_strategies(
            digits_permuted,
            [MAS(lam=1000.0)],
            TrainConfig(epochs=1, batch_size=32, optimizer="sgd", lr=0.05),
        )
