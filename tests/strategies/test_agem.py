"""A-GEM: the gradient is projected exactly when it conflicts with the memory's gradient, the
memory holds size // n_tasks samples of each finished task, and it reduces forgetting on permuted
digits."""

from __future__ import annotations

import pytest
import torch
from conftest import CONVERGED, finetune_baseline, task_ctx

from retain.config import TrainConfig
from retain.models import MLP
from retain.strategies.agem import AGEM

TRAIN = TrainConfig(batch_size=8)  # for hooks called by hand


def test_memory_holds_size_over_n_tasks_samples_of_each_task(tiny_stream):
    model, agem = MLP(64, 6, [16]), AGEM(size=31)
    for i, task in enumerate(tiny_stream.tasks):
        agem.after_task(model, task_ctx(tiny_stream, i, model, train=TRAIN, seed=i))
        held = agem.buffer_.data
        assert len(agem.buffer_) == 10 * (i + 1)  # 31 // 3 tasks
        assert held["task"][10 * i : 10 * (i + 1)].tolist() == [i] * 10
        rows = held["x"][10 * i : 10 * (i + 1)]
        assert all((task.train.x == r).all(1).any() for r in rows)  # drawn from that task


def _grads(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _set_grads(model, flat):
    offset = 0
    for p in model.parameters():
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def test_gradient_is_projected_only_when_it_conflicts(tiny_stream):
    torch.manual_seed(0)
    model = MLP(64, 6, [16])
    ctx = task_ctx(tiny_stream, 0, model, train=TRAIN)
    agem = AGEM(size=30, batch_size=64)  # the reference batch is the whole memory (10 samples)
    agem.after_task(model, ctx)
    mem = {k: v[:10] for k, v in agem.buffer_.data.items()}
    ref = torch.autograd.grad(ctx.task_loss(model(mem["x"]), mem), list(model.parameters()))
    g_ref = torch.cat([r.reshape(-1) for r in ref])

    g = -g_ref + 0.5 * torch.randn_like(g_ref)  # conflicts: g . g_ref < 0
    assert torch.dot(g, g_ref) < 0
    _set_grads(model, g)
    agem.after_backward(model, ctx)
    projected = g - torch.dot(g, g_ref) / torch.dot(g_ref, g_ref) * g_ref
    assert torch.allclose(_grads(model), projected, atol=1e-5)
    assert abs(torch.dot(_grads(model), g_ref)) < 1e-4 * g_ref.norm() * g.norm()

    g = g_ref + 0.1 * torch.randn_like(g_ref)  # agrees: left alone
    _set_grads(model, g)
    agem.after_backward(model, ctx)
    assert torch.allclose(_grads(model), g)


@pytest.mark.slow
def test_agem_reduces_forgetting_on_permuted_digits(digits_permuted, run_strategies):
    # Measured, trained to convergence (lr 0.1, 10 epochs), seeds 0-3: A-GEM avg +0.19..+0.25 over
    # finetune, forgetting -0.22..-0.34; seed 0: finetune 0.499 / 0.543, A-GEM 0.741 / 0.204.
    # In class-IL A-GEM is weak, as in mammoth (Seq-MNIST 46.7% vs ER 86.1%): with the fixture's
    # default it gains +0.17..+0.22 avg over finetune (seeds 0-2) but trained to convergence it
    # forgets like finetune (0.195 vs 0.193 avg, forgetting 0.99), so it is tested here.
    base = finetune_baseline(digits_permuted, CONVERGED).metrics
    m = run_strategies(digits_permuted, [AGEM(batch_size=64)], train=CONVERGED).metrics
    assert m.avg_accuracy >= base.avg_accuracy + 0.12
    assert m.forgetting <= base.forgetting - 0.15
