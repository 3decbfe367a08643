"""The strategy context: frozen, and enough on its own for a strategy that needs autocast,
gathering and its rank; strategies never import the training loop."""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import task_ctx

import retain.strategies
from retain.api import run
from retain.config import RunConfig, TrainConfig
from retain.data.scenarios import split
from retain.models import MLP
from retain.strategies.base import Strategy
from retain.strategies.context import TaskContext


@dataclass
class _Probe(Strategy):
    """Uses only the context's named operations: an extra forward under ``ctx.autocast()``,
    the whole global batch through ``ctx.gather()``, and ``ctx.rank`` / ``ctx.world_size``."""

    def __post_init__(self) -> None:
        self.gathered_ = 0
        self.ranks_: list[int] = []
        self.extra_losses_: list[float] = []

    def loss(self, loss, out, batch, ctx):
        with torch.no_grad(), ctx.autocast():
            extra = ctx.task_loss(ctx.forward(ctx.model, batch), batch)
        self.extra_losses_.append(float(extra))
        self.gathered_ += len(ctx.gather(batch["y"]))
        self.ranks_.append(ctx.rank * ctx.world_size)
        return loss


def test_a_strategy_needs_nothing_but_the_context(digits):
    stream = split(digits, n_tasks=2, classes=[0, 1, 2, 3])
    torch.manual_seed(0)
    probe = _Probe()
    config = RunConfig(train=TrainConfig(epochs=1, batch_size=32, optimizer="sgd", lr=0.05))
    r = run(MLP(64, 4, [16]), stream, [probe], config)
    assert probe.gathered_ == sum(len(t.train) for t in stream.tasks)  # one process: every sample
    assert set(probe.ranks_) == {0}
    assert all(v == v and v > 0 for v in probe.extra_losses_)
    # The extra forward changes nothing: same matrix as plain finetuning.
    torch.manual_seed(0)
    assert r.matrix == run(MLP(64, 4, [16]), stream, ["finetune"], config).matrix


def test_the_context_is_frozen_and_holds_no_loop_state(tiny_stream):
    ctx = task_ctx(tiny_stream)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.model = torch.nn.Linear(2, 2)
    names = {f.name for f in dataclasses.fields(TaskContext)}
    assert not names & {"accelerator", "train", "step", "epoch"}
    assert (ctx.rank, ctx.world_size) == (0, 1)
    assert ctx.grads_are_local and not ctx.grads_are_scaled


def test_the_operations_are_the_contexts_own(tiny_stream):
    """A context built by hand with other operations (here: a fake second process) is what the
    strategy sees: it reads them only from the context."""
    base = task_ctx(tiny_stream)
    seen = []

    def gather(batch):  # as if the other process held the same samples
        seen.append(batch)
        return {k: torch.cat([v, v]) for k, v in batch.items()}

    ctx = dataclasses.replace(base, rank=1, world_size=2, gather=gather)
    from retain.strategies.replay import Replay

    replay = Replay(size=10)
    batch = next(iter(ctx.make_loader(ctx.task.train, batch_size=4)))
    replay.batch(batch, ctx)
    assert len(seen) == 1 and replay.buffer_.seen == 8  # this rank's 4 and the "other" 4


def test_strategies_never_import_the_training_loop():
    root = Path(retain.strategies.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [
                f"{path.name}: {n}"
                for n in names
                if n == "retain.train" or n.startswith("retain.train.")
            ]
    assert offenders == []
