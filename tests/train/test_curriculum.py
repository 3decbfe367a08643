"""A difficulty order: ``train.order`` easy_first / hard_first trains a task's samples sorted
by the model's own loss on each of them before the task, and records the pass."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import task_ctx

from retain.api import run
from retain.config import RunConfig, TrainConfig
from retain.data.stream import Stream, Task, TensorData
from retain.models import MLP
from retain.strategies.base import Strategy
from retain.train.curriculum import per_sample_losses, train_loader


def _stream(mix=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 4, generator=g)
    y = torch.randint(0, 3, (24,), generator=g)
    data = TensorData(x=x, y=y, idx=torch.arange(24))
    tasks = (Task("a", data, data[torch.arange(6)]), Task("b", data, data[torch.arange(6)]))
    src = TensorData(x=torch.randn(10, 4, generator=g), y=torch.zeros(10, dtype=torch.long))
    src = src.with_tensor("idx", torch.arange(100, 110))
    return Stream(tasks, n_outputs=3, setting="domain_il", sources={"gen": src}, mix=mix or {})


class _Record(Strategy):
    """Keeps the sample ids of every batch of the first task, in training order."""

    def __init__(self):
        self.ids = []

    def batch(self, batch, ctx):
        if ctx.task_index == 0:
            self.ids += batch["idx"].tolist()
        return batch


@pytest.mark.parametrize("order", ["easy_first", "hard_first"])
def test_order_sorts_by_the_loss_before_training(order):
    stream = _stream()
    torch.manual_seed(0)
    model = MLP(4, 3, [8])
    before = copy.deepcopy(model)
    ctx = task_ctx(stream, 0, before)
    losses = per_sample_losses(before, stream.tasks[0].train, ctx)
    spy = _Record()
    cfg = RunConfig(train=TrainConfig(epochs=1, batch_size=5, order=order, lr=0.5))
    record = run(model, stream, ["finetune", spy], cfg).record
    expected = torch.sort(losses, descending=order == "hard_first", stable=True).indices
    assert spy.ids == expected.tolist()  # the whole epoch, in loss order, untouched by training
    entry = record.curriculum[0]
    assert entry["order"] == order and entry["seconds"] >= 0
    lo, hi = float(losses.min()), float(losses.max())
    assert (entry["first_loss"], entry["last_loss"]) == pytest.approx(
        (lo, hi) if order == "easy_first" else (hi, lo)
    )


def test_shuffled_is_the_default_and_changes_nothing():
    stream = _stream()
    ctx = task_ctx(stream, 0, MLP(4, 3, [8]))
    loader, info = train_loader(ctx.model, stream.tasks[0].train, ctx, TrainConfig())
    assert info == {} and loader.shuffle


def test_an_ordered_task_keeps_its_order_inside_a_mix():
    stream = _stream({"a": {"a": 0.6, "gen": 0.4}})
    model = MLP(4, 3, [8])
    ctx = task_ctx(stream, 0, model, train=TrainConfig(batch_size=5))
    losses = per_sample_losses(model, stream.tasks[0].train, ctx)
    cfg = TrainConfig(batch_size=5, order="easy_first")
    loader, _ = train_loader(model, stream.tasks[0].train, ctx, cfg)
    own = [i for b in loader for i in b["idx"].tolist() if i < 100]
    assert own == torch.sort(losses, stable=True).indices[: len(own)].tolist()
