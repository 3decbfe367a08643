"""Progressive networks: earlier columns frozen and bit-identical, zero forgetting in task-IL,
growth reported, and resume rebuilds the columns."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from retain.api import run
from retain.config import RunConfig, TrainConfig
from retain.data.scenarios import split
from retain.models import MLP
from retain.models.progressive import ProgressiveNet
from retain.strategies.progressive import Progressive


def _ctx(task_index: int) -> SimpleNamespace:
    return SimpleNamespace(task_index=task_index, unwrap=lambda m: m)


def test_columns_are_frozen_and_earlier_outputs_bit_identical():
    torch.manual_seed(0)
    strategy = Progressive()
    net = strategy.setup(MLP(64, 6, [16, 8]), _ctx(0))
    x = torch.rand(20, 1, 8, 8)
    first = net(x, task=torch.zeros(20, dtype=torch.long)).clone()
    for t in (1, 2):
        net = strategy.before_task(net, _ctx(t))
        trainable = {n for n, p in net.named_parameters() if p.requires_grad}
        own = (f"columns.{t}.", f"laterals.{t}.")
        assert trainable and all(n.startswith(own) for n in trainable)
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
        for _ in range(5):
            task = torch.full((20,), t)
            loss = nn.functional.cross_entropy(net(x, task=task), torch.randint(0, 6, (20,)))
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert torch.equal(net(x, task=torch.zeros(20, dtype=torch.long)), first)
    # Column 2 has laterals from columns 0 and 1 into its layers 1 and 2 (none into layer 0).
    assert len(net.laterals[2]) == 2 and all(len(lat) == 2 for lat in net.laterals[2])
    mixed = torch.tensor([0, 2] * 10)
    out = net(x, task=mixed)
    assert torch.equal(out[::2], first[::2])
    assert torch.equal(net(x), net(x, task=torch.full((20,), 2)))  # no ids: the last column
    stats = strategy.stats()
    assert stats["columns"] == 3 and stats["params"] == sum(p.numel() for p in net.parameters())
    assert stats["params_per_column"][0] == sum(p.numel() for p in MLP(64, 6, [16, 8]).parameters())
    per = stats["params_per_column"]
    assert per[2] > per[1] > per[0]  # each column adds laterals from every earlier one


@pytest.mark.slow
def test_zero_forgetting_in_task_il(digits_task_il, run_strategies):
    fine = run_strategies(digits_task_il, ["finetune"])
    prog = run_strategies(digits_task_il, ["progressive"])
    R = prog.matrix  # R[i + 1][j]: task j after training task i
    assert prog.metrics.forgetting == 0.0 and fine.metrics.forgetting > 0.01
    for j in range(len(digits_task_il)):
        assert all(R[i][j] == R[j + 1][j] for i in range(j + 1, len(R)))
    # Measured: average accuracy 0.971 (finetune 0.954, 5x parameters' growth 11.2).
    assert prog.metrics.avg_accuracy >= fine.metrics.avg_accuracy
    assert prog.record.strategy_stats[-1]["progressive"]["columns"] == 5


def test_class_il_warns_but_runs(tiny_stream):
    warnings = []
    torch.manual_seed(0)
    r = run(
        MLP(64, 6, [16]),
        tiny_stream,
        ["progressive"],
        RunConfig(train=TrainConfig(epochs=1)),
        warn=warnings.append,
    )
    assert len(r.matrix) == 4 and any("task labels at test time" in w for w in warnings)


def test_unsupported_models_are_refused():
    with pytest.raises(ValueError, match="MLP-shaped"):
        Progressive().setup(
            nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 2)), _ctx(0)
        )
    with pytest.raises(ValueError, match="ends with a Linear"):
        Progressive().setup(nn.Sequential(nn.Linear(4, 2), nn.ReLU()), _ctx(0))
    assert isinstance(
        Progressive().setup(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)), _ctx(0)),
        ProgressiveNet,
    )


def test_resume_rebuilds_the_columns(digits, tmp_path, crash_and_resume):
    stream = split(digits, n_tasks=3, classes=[0, 1, 2, 3, 4, 5], setting="task_il")
    cfg = TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=1e-3)

    def mlp():
        torch.manual_seed(0)
        return MLP(64, 6, [32])

    r = crash_and_resume(stream, lambda: [Progressive()], cfg, tmp_path / "run", mlp)
    (strategy,), resumed = r.strategies, r.resumed
    assert resumed.matrix == r.full.matrix
    assert strategy.columns_ == 3 and resumed.model.n_columns == 3
