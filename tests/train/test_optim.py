from __future__ import annotations

import pytest
import torch

from retain.config import TrainConfig
from retain.train.optim import Schedule, build_optimizer, default_groups, steps_for


def test_wsd_warms_up_holds_then_decays():
    s = Schedule("wsd", total=100, warmup=0.1, decay=0.2, min_lr=0.0)
    f = [s.factor(i) for i in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warmup over 10
    assert all(v == 1.0 for v in f[10:80])  # stable
    assert f[80] < 1.0 and f[99] == pytest.approx(0.0)  # decay over the last 20
    assert all(a >= b for a, b in zip(f[80:], f[81:]))


def test_cosine_ends_at_min_lr_and_constant_is_flat():
    s = Schedule("cosine", total=50, warmup=5, min_lr=0.1)
    assert s.warmup_steps == 5
    assert s.factor(5) == pytest.approx(1.0)
    assert s.factor(10_000) == pytest.approx(0.1)
    assert Schedule("constant", 10).factor(7) == 1.0


def test_steps_for_epochs_and_accumulation():
    cfg = TrainConfig(epochs=2, batch_size=10)
    assert steps_for(95, cfg) == 20
    assert steps_for(95, TrainConfig(epochs=1, batch_size=10, grad_accum=3)) == 4
    assert steps_for(95, TrainConfig(steps=7)) == 7
    assert steps_for(100, cfg, world_size=2) == 10


def test_frozen_parameters_are_left_out():
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    m[0].weight.requires_grad_(False)
    groups = default_groups(m)
    assert groups[0]["names"] == ["0.bias", "1.weight", "1.bias"]
    opt = build_optimizer(groups, TrainConfig(optimizer="adamw", lr=0.5))
    assert opt.param_groups[0]["base_lr"] == 0.5


def test_unwrap_walks_wrappers_without_accelerate():
    from retain.strategies.context import unwrap

    inner = torch.nn.Linear(2, 2)
    assert unwrap(inner) is inner
    assert unwrap(torch.nn.DataParallel(inner)) is inner

    class Compiled(torch.nn.Module):  # what torch.compile returns keeps the module in _orig_mod
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    assert unwrap(Compiled(torch.nn.DataParallel(inner))) is inner
