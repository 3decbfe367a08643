"""The GPU path, checked on the CPU: no read-back from the device inside a step, bf16 autocast,
and fp16 gradients unscaled once before the gradient hooks.

A read-back (``.item()``, ``float(t)``, ``.cpu()``, ``.tolist()``, ``if t:``) makes the host wait
until the GPU has finished everything queued so far; once per step it keeps the GPU idle
while Python prepares the next one. Here every such call made from retain's code is counted
while training, and the count must not grow with the number of steps.
"""

from __future__ import annotations

import collections
import dataclasses
import sys

import pytest
import torch

from retain.api import run
from retain.config import RunConfig, TrainConfig
from retain.data.scenarios import split
from retain.models import MLP
from retain.strategies.base import Strategy
from retain.train import loop as loop_module

# ``.numpy()`` is left out: it works on CPU tensors only, so a device tensor gets there by ``.cpu()``.
READ_BACKS = ("item", "cpu", "tolist", "__bool__", "__float__", "__int__", "__index__")


def _caller_in_retain() -> str | None:
    """``file:line`` of the nearest caller outside torch, if it is retain's code."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not (name == "torch" or name.startswith("torch.")):
            if name == "retain" or name.startswith("retain."):
                return f"{name}:{frame.f_lineno}"
            return None
        frame = frame.f_back
    return None


@pytest.fixture
def read_backs(monkeypatch):
    """Every read-back from a tensor made by retain's code, counted by ``module:line method``."""
    counts: collections.Counter[str] = collections.Counter()
    for name in READ_BACKS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, __original=original, __name=name, **kwargs):
            where = _caller_in_retain()
            if where is not None:
                counts[f"{where} {__name}"] += 1
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


STRATEGIES = {
    "finetune": ["finetune"],
    "replay": [{"name": "replay", "size": 50}],
    "der": [{"name": "der", "size": 50, "alpha": 0.5, "beta": 0.5}],
    "ewc": [{"name": "ewc", "lam": 1.0}],
    # DER offers the batch after replay appended to it: the replayed mark decides what is stored.
    "replay+der": [{"name": "replay", "size": 50}, {"name": "der", "size": 50}],
}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_a_step_reads_nothing_back_from_the_device(digits, read_backs, monkeypatch, name):
    # The loss is read once per log interval: with the interval past the run's length, what
    # is left is a constant per task (the last step's log, the Fisher pass, evaluation).
    monkeypatch.setattr(loop_module, "LOG_EVERY", 10**9)
    stream = split(digits, n_tasks=2, classes=[0, 1, 2, 3])
    counts = []
    for epochs in (1, 4):
        read_backs.clear()
        cfg = RunConfig(train=TrainConfig(epochs=epochs, batch_size=16, optimizer="sgd", lr=0.05))
        run(MLP(64, 4, [32]), stream, STRATEGIES[name], cfg)
        counts.append(dict(read_backs))
    # 4x the steps (140 instead of 35), the same read-backs, at the same lines: evaluation's
    # scores after each task, the end of each task.
    assert counts[1] == counts[0]


def test_the_exploding_loss_is_still_caught_at_a_log_interval(digits, monkeypatch):
    # The check reads the loss only at log intervals (here every step): a learning rate of 1e6
    # still stops the run with the divergence message.
    from retain.errors import RetainError

    monkeypatch.setattr(loop_module, "LOG_EVERY", 5)
    stream = split(digits, n_tasks=1, classes=[0, 1])
    cfg = RunConfig(train=TrainConfig(epochs=3, batch_size=16, optimizer="sgd", lr=1e6))
    with pytest.raises(RetainError, match="loss became"):
        run(MLP(64, 2, [32]), stream, ["finetune"], cfg)


@dataclasses.dataclass(repr=False)
class _Dtypes(Strategy):
    """Records the dtype of the logits the loop's forward produced."""

    def __post_init__(self) -> None:
        self.dtypes_: set[torch.dtype] = set()

    def loss(self, loss, out, batch, ctx):
        self.dtypes_.add(ctx.logits(out).dtype)
        return loss


def test_bf16_autocast_trains_on_the_cpu(digits):
    stream = split(digits, n_tasks=2, classes=[0, 1, 2, 3])
    probe = _Dtypes()
    train = TrainConfig(epochs=2, batch_size=16, mixed_precision="bf16", optimizer="adam", lr=0.01)
    cfg = RunConfig(train=train)
    result = run(MLP(64, 4, [32]), stream, [{"name": "ewc", "lam": 1.0}, probe], cfg)
    assert probe.dtypes_ == {torch.bfloat16}  # the forward ran under autocast
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # master weights
    # Each task was learned (class-IL: the second still shares the head with the first's).
    assert result.matrix[1][0] > 0.9 and result.matrix[2][1] > result.matrix[1][1] + 0.3


class _ScaledAccelerator:
    """What the loop uses of an Accelerator with an fp16 loss scaler (a real GradScaler on the
    CPU). Unscaling twice raises, as ``GradScaler.unscale_`` does."""

    num_processes = 1

    def __init__(self, scale: float) -> None:
        self.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        self.unscaled = 0

    def backward(self, loss):
        self.scaler.scale(loss).backward()

    def unscale_gradients(self, optimizer):
        self.unscaled += 1
        self.scaler.unscale_(optimizer.optimizer)

    def clip_grad_norm_(self, params, max_norm):
        self.unscale_gradients(self._opt)
        return torch.nn.utils.clip_grad_norm_(params, max_norm)


class _ScaledOptimizer:
    """Accelerate's optimizer wrapper under fp16: the scaler steps (skipping on inf) and updates."""

    def __init__(self, optimizer, acc: _ScaledAccelerator) -> None:
        self.optimizer, self.acc = optimizer, acc
        acc._opt = self

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def step(self):
        self.acc.scaler.step(self.optimizer)
        self.acc.scaler.update()

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)


@dataclasses.dataclass(repr=False)
class _Grads(Strategy):
    """Records the gradients ``after_backward`` sees (what A-GEM's projection reads)."""

    def __post_init__(self) -> None:
        self.seen_: list[list[torch.Tensor]] = []

    def after_backward(self, model, ctx):
        self.seen_.append([p.grad.clone() for p in model.parameters()])


def test_fp16_gradients_are_unscaled_once_before_the_gradient_hooks(digits):
    from retain.objectives import make_objective
    from retain.strategies.context import TaskContext
    from retain.train.loop import fit_task
    from retain.train.optim import Schedule, build_optimizer, default_groups

    stream = split(digits, n_tasks=1, classes=[0, 1])
    task = stream.tasks[0]
    data = task.train[torch.arange(32)]
    objective = make_objective(stream.objective, stream.n_outputs)
    model = MLP(64, 2, [16])
    ctx = TaskContext(
        stream=stream,
        task=task,
        task_index=0,
        objective=objective,
        seed=0,
        generator=torch.Generator().manual_seed(0),
        batch_size=32,
        grads_are_local=True,
        grads_are_scaled=True,
    )
    ctx = dataclasses.replace(ctx, model=model)
    batch = next(iter(ctx.make_loader(data)))
    # The true gradient of the first (only) batch, at the initial weights.
    model.zero_grad()
    ctx.task_loss(ctx.forward(model, batch), batch).backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)

    cfg = TrainConfig(steps=1, batch_size=32, optimizer="sgd", lr=0.1, grad_clip=100.0)
    acc = _ScaledAccelerator(scale=2.0**12)
    optimizer = _ScaledOptimizer(build_optimizer(default_groups(model), cfg), acc)
    hook = _Grads()
    fit_task(
        model,
        data,
        ctx,
        [hook],
        optimizer,
        Schedule.from_config(cfg, 1),
        cfg,
        acc,
        loader=ctx.make_loader(data),
    )
    assert acc.unscaled == 1  # once, before the hook; clipping did not unscale again
    for got, want in zip(hook.seen_[0], reference):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
