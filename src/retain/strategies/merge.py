"""Model merging after each task: fold the new task's specialist into the model by a merge method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from retain.errors import Unsupported
from retain.merging import USES_BASE, check_method, merge, require_peft
from retain.strategies import register
from retain.strategies.base import Strategy
from retain.utils.seed import derive_seed

if TYPE_CHECKING:
    from torch import nn

    from retain.strategies.context import TaskContext


@register("merge", reference_url="https://arxiv.org/abs/2306.01708")
@dataclass(repr=False)  # keep Strategy.__repr__: only non-default fields
class Merge(Strategy):
    """Merge each task's fine-tuned weights (its specialist) into the model: task arithmetic, TIES, DARE, SLERP.

    After a task trains, its weights are merged by ``method`` (definitions: docs/merging.md and
    :mod:`retain.merging`) and the merged weights are what is evaluated and kept. In mode
    ``previous`` the task vector is the task's own update (the specialist minus the model before
    the task); in mode ``all`` task vectors are taken against the model before the first task
    (the base, kept in memory). Floating-point weights and buffers are merged; integer buffers
    (batch norm's step counter) come from the model the vectors are taken against. Memory: the
    model before the task, and in mode ``all`` the base and one copy per task; while merging,
    two more copies for a moment (the specialist and the merge).

    Args:
        method: ``task_arithmetic``, ``ties``, ``dare_linear``, ``dare_ties``, ``slerp`` or
            ``average``.
        weight: How much of the new task's specialist enters the merge, in [0, 1] (mode
            previous: 0 keeps the model as it was before the task, 1 takes the specialist,
            trimmed for ties and dare; mode all: the task vector's weight). A list gives one
            weight per task.
        density: Fraction of each task vector's entries kept by ties (the largest in magnitude)
            and dare (at random, the kept ones rescaled by 1/density); 1 keeps them all.
        mode: ``previous`` (default): add ``w`` times the task's update to the model before the
            task, trimmed (ties) or dropped and rescaled (dare) first: ``prev + w * (theta -
            prev)`` for task arithmetic; ``slerp`` and ``average`` interpolate the previous
            model (``1 - w``) and the specialist (``w``). The next task trains from the merge, so
            learning builds on it and memory stays at one extra copy whatever the number of
            tasks. ``all``: every task trains from the base and the task vectors of all tasks so
            far are merged, each with its weight (Ilharco et al.'s lambda): specialists that know
            nothing of each other, one stored copy per task.
        sweep: After each task, also evaluate the merge at this many new-task weights evenly
            spaced over [0, 1] (11: 0, 0.1, ..., 1) on every task's held-out data (validation
            split when every task has one, else test) and on the stream's evaluation suites; the
            scores go to result.json (strategy_stats, ``merge.sweep``) and the report plots
            retention against the new task. The run continues with ``weight``. 0: no sweep.
    """

    method: Literal["task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "average"] = (
        "ties"
    )
    weight: float | list[float] = 0.5
    density: float = field(default=0.5, metadata={"gt": 0, "le": 1})
    mode: Literal["previous", "all"] = "previous"
    sweep: int = field(default=0, metadata={"ge": 0})

    def __post_init__(self) -> None:
        super().__post_init__()
        weights = self.weight if isinstance(self.weight, list) else [self.weight]
        if not weights or any(not 0.0 <= w <= 1.0 for w in weights):
            raise ValueError(f"merge weights must be in [0, 1], got {self.weight}")
        if self.method == "slerp" and self.mode == "all":
            raise ValueError("slerp interpolates two models: use mode previous, or ties/average")
        if self.sweep == 1:
            raise ValueError("sweep needs at least 2 points (0 and 1), or 0 for no sweep")
        self.base_: dict[str, torch.Tensor] = {}  # the model before the first task
        self.specialists_: list[dict[str, torch.Tensor]] = []  # mode all: each task's weights
        self._start: dict[str, torch.Tensor] = {}  # the model as this task began
        self._sweep: dict[str, Any] | None = None

    def check(self, stream: Any) -> None:
        super().check(stream)
        if isinstance(self.weight, list) and len(self.weight) != len(stream.tasks):
            raise Unsupported(
                f"strategy 'merge': {len(self.weight)} weights for {len(stream.tasks)} tasks; "
                "give one weight per task, or one number"
            )

    def _weight(self, i: int) -> float:
        return self.weight[i] if isinstance(self.weight, list) else self.weight

    def setup(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        self.check(ctx.stream)
        require_peft(self.method)
        if not self.base_ and self.mode == "all":
            self.base_ = _snapshot(ctx.unwrap(model))
        return model

    def before_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        net = ctx.unwrap(model)
        if self.mode == "all":
            net.load_state_dict(self.base_, strict=False)  # every specialist starts at the base
        else:
            self._start = _snapshot(net)
        return model

    def _merged(self, theta: dict[str, torch.Tensor], w: float, ctx: TaskContext) -> dict:
        i = ctx.task_index
        seed = derive_seed(ctx.seed, i, 7)  # DARE's drop: the same for a resumed run
        if self.mode == "previous" and self.method in USES_BASE:
            # The task's update, theta - previous, trimmed (ties) or dropped (dare) and scaled
            # by w: 0 keeps the previous model, 1 takes the specialist's update whole (trimmed).
            # Taking task vectors from the first task's base instead would make the previous
            # model's vector zero on the first task, and TIES's disjoint mean, which divides by
            # the agreeing weights, would then return the specialist whatever w is.
            return merge(self._start, [theta], [1.0], self.method, self.density, seed, lam=w)
        if self.mode == "previous":
            models, weights = [self._start, theta], [1.0 - w, w]
        else:
            models = [*self.specialists_[:i], theta]
            weights = [self._weight(j) for j in range(i)] + [w]
        if sum(weights) == 0 and self.method in ("average", "slerp"):
            weights = [1.0] * len(weights)  # a lone zero-weight specialist: keep it unweighted
        check_method(self.method, len(models), len(weights), self.density)
        return merge(self.base_ or None, models, weights, self.method, self.density, seed)

    def after_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        net = ctx.unwrap(model)
        theta = _snapshot(net)
        if self.mode == "all":
            self.specialists_ = [*self.specialists_[: ctx.task_index], theta]
        self._sweep = None
        if self.sweep:
            self._sweep = self._run_sweep(net, theta, ctx)
        net.load_state_dict(self._merged(theta, self._weight(ctx.task_index), ctx), strict=False)
        self._start = {}
        return model

    def _run_sweep(self, net: nn.Module, theta: dict, ctx: TaskContext) -> dict[str, Any]:
        from retain.eval.evaluator import evaluate, evaluate_sets

        stream = ctx.stream
        split = "val" if all(t.val is not None for t in stream.tasks) else "test"
        acc = _Evaluator(ctx)
        points = []
        for k in range(self.sweep):
            w = k / (self.sweep - 1)
            net.load_state_dict(self._merged(theta, w, ctx), strict=False)
            rows = evaluate(net, stream, ctx.objective, acc, ctx.batch_size, split=split)
            suites = (
                evaluate_sets(net, stream.suites, ctx.objective, acc, ctx.batch_size)
                if stream.suites
                else {}
            )
            tasks = [{s: v for s, v in r.items() if isinstance(v, float)} for r in rows]
            points.append({"weight": round(w, 6), "tasks": tasks, "suites": suites})
        split_name = "validation" if split == "val" else "test"
        return {"split": split_name, "task": ctx.task_index, "points": points}

    def stats(self) -> dict[str, Any]:
        return {"sweep": self._sweep} if self._sweep is not None else {}


def _snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the module's weights and buffers, by state-dict name (integer buffers too:
    :func:`retain.merging.merge` takes them from the base, unmerged)."""
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


class _Evaluator:
    """The part of an Accelerator that :func:`retain.eval.evaluator.evaluate` uses, from the
    task context (a strategy does not see the Accelerator)."""

    def __init__(self, ctx: TaskContext) -> None:
        self.device, self.autocast = ctx.device, ctx.autocast
        self.process_index, self.num_processes = ctx.rank, ctx.world_size
        self._reduce = ctx.all_reduce

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return self._reduce(tensor, op=reduction)
