"""The regression guard: checks, while a task trains, that named evaluation sets (the stream's
suites, earlier tasks) stay within a threshold of their scores before the task began.

:class:`TaskGuard` serves one task's training. ``start`` scores the watched sets (the baselines,
recorded as the check at step 0); the training loop calls the guard every N steps (an ``Every``
hook, see :mod:`retain.train.loop`) and ``finish`` once more at the last step if that was not a
check step. A check fails for a name whose score is worse than its baseline by more than its
threshold, in the score's own direction (a rise in loss or perplexity, a fall in accuracy):
relative thresholds as a fraction of the baseline's magnitude, absolute ones in the score's units.

Actions: ``warn`` calls the run's warn callback once per breach (a name that goes from passing
to failing) and training goes on. ``stop`` keeps a copy of the weights at every passing check
(the task's start counts as one) and, at the first failed check, loads the last passing copy back
and ends the task's training. The copy is one more set of the model's weights on the model's
device. The optimizer's state is not rolled back: with ``train.optimizer_state: reset`` (the
default) the next task starts a fresh optimizer anyway; with ``keep`` it carries the moments of
the steps after the restored point. Strategies' state accumulated during those steps (SI's path
integral, a replay buffer's reservoir counts) stays too; ``after_task`` hooks see the restored
weights.

What the guard did is ``TaskGuard.record()``: the baselines and limits, every check with its
scores, the breaches, and the step training stopped at and the step whose weights were restored.
It is part of the task's entry in the run's history, so a resumed run keeps it; nothing of the
guard crosses a task boundary except through the history's rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class Limit:
    """The thresholds on one watched name (either may be None; both apply when both are set)."""

    name: str
    relative: float | None = None
    absolute: float | None = None

    def bound(self, baseline: float, higher_is_better: bool) -> float:
        """The worst score that still passes."""
        slack = []
        if self.relative is not None:
            slack.append(self.relative * abs(baseline))
        if self.absolute is not None:
            slack.append(self.absolute)
        allowed = min(slack) if slack else 0.0
        return baseline - allowed if higher_is_better else baseline + allowed


def fails(score: float, bound: float, higher_is_better: bool) -> bool:
    """Whether ``score`` is beyond ``bound``; a NaN score fails."""
    if score != score:
        return True
    return score < bound if higher_is_better else score > bound


class TaskGuard:
    """The guard of one task's training (see the module docstring).

    Args:
        task: the task's name, for messages.
        limits: the watched names and their thresholds.
        metric: the score watched; ``higher_is_better`` its direction.
        action: ``warn`` or ``stop``.
        score: ``score(model) -> {name: {score: value}}`` for every watched name (and any other
            set worth recording on the trajectory, such as every suite).
        unwrap: the bare model behind a wrapped one (its ``state_dict`` is what is restored).
        warn: called with one line per breach.
    """

    def __init__(
        self,
        task: str,
        limits: list[Limit],
        metric: str,
        higher_is_better: bool,
        action: str,
        score: Callable[[nn.Module], dict[str, dict[str, float]]],
        unwrap: Callable[[nn.Module], nn.Module],
        warn: Callable[[str], None],
    ) -> None:
        self.task, self.limits, self.metric = task, limits, metric
        self.higher, self.action = higher_is_better, action
        self.score, self.unwrap, self.warn = score, unwrap, warn
        self.baselines: dict[str, float] = {}
        self.bounds: dict[str, float] = {}
        self.checks: list[dict[str, Any]] = []
        self.breaches: list[dict[str, Any]] = []
        self.failing: set[str] = set()
        self.stopped_at: int | None = None
        self.restored_step: int | None = None
        self._saved: tuple[int, dict[str, torch.Tensor]] | None = None

    def start(self, model: nn.Module) -> None:
        """The baselines: the watched sets' scores before the task's first step."""
        scores = self.score(model)
        self.baselines = {lim.name: scores[lim.name][self.metric] for lim in self.limits}
        self.bounds = {
            lim.name: lim.bound(self.baselines[lim.name], self.higher) for lim in self.limits
        }
        self.checks.append({"step": 0, "scores": scores, "failed": []})
        if self.action == "stop":
            self._keep(0, model)

    def __call__(self, step: int, model: nn.Module) -> bool:
        """One check at ``step``; True ends the task's training (action ``stop`` only)."""
        if self.stopped_at is not None or (self.checks and self.checks[-1]["step"] == step):
            return self.stopped_at is not None
        scores = self.score(model)
        failed = [
            lim.name
            for lim in self.limits
            if fails(scores[lim.name][self.metric], self.bounds[lim.name], self.higher)
        ]
        self.checks.append({"step": step, "scores": scores, "failed": failed})
        for name in failed:
            if name not in self.failing:
                self._breach(step, name, scores[name][self.metric])
        self.failing = set(failed)
        if not failed:
            if self.action == "stop":
                self._keep(step, model)
            return False
        if self.action != "stop":
            return False
        assert self._saved is not None  # start() kept the task's initial weights
        self.restored_step = self._saved[0]
        self.unwrap(model).load_state_dict(self._saved[1])
        self.stopped_at = step
        return True

    def finish(self, step: int, model: nn.Module) -> None:
        """A last check at the task's final step when training did not end on a check. After a
        stop the restored weights are loaded once more: early stopping (``train.patience``)
        loads its best weights after the loop, and those may come from past the guard's limit."""
        if self.stopped_at is None:
            self(step, model)
        if self.stopped_at is not None and self._saved is not None:
            self.unwrap(model).load_state_dict(self._saved[1])
        self._saved = None

    def _keep(self, step: int, model: nn.Module) -> None:
        self._saved = None  # the previous copy goes first: one copy of the weights at a time
        state = self.unwrap(model).state_dict()
        self._saved = (step, {k: v.detach().clone() for k, v in state.items()})

    def _breach(self, step: int, name: str, score: float) -> None:
        baseline, bound = self.baselines[name], self.bounds[name]
        self.breaches.append(
            {"step": step, "name": name, "baseline": baseline, "score": score, "limit": bound}
        )
        then = (
            "; training stops and the weights of the last passing check are restored"
            if self.action == "stop"
            else ""
        )
        self.warn(
            f"guard: {self.metric} on {name} is {score:.4g} at step {step} of task "
            f"'{self.task}', past its limit {bound:.4g} (baseline {baseline:.4g}){then}"
        )

    def state_dict(self) -> dict[str, Any]:
        """What the checks so far left (a mid-task checkpoint); the baselines are not in it:
        ``start`` scores them again, from the same weights, on resume."""
        return {
            "checks": self.checks,
            "breaches": self.breaches,
            "failing": sorted(self.failing),
            "stopped_at": self.stopped_at,
            "restored_step": self.restored_step,
            "saved": list(self._saved) if self._saved is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.checks, self.breaches = list(state["checks"]), list(state["breaches"])
        self.failing = set(state["failing"])
        self.stopped_at, self.restored_step = state["stopped_at"], state["restored_step"]
        saved = state["saved"]
        self._saved = (int(saved[0]), saved[1]) if saved is not None else None

    def record(self) -> dict[str, Any]:
        """What the guard did during this task (the task's ``guard`` entry in the history)."""
        return {
            "task": self.task,
            "metric": self.metric,
            "action": self.action,
            "limits": {
                lim.name: {
                    "relative": lim.relative,
                    "absolute": lim.absolute,
                    "baseline": self.baselines.get(lim.name),
                    "limit": self.bounds.get(lim.name),
                }
                for lim in self.limits
            },
            "checks": self.checks,
            "breaches": self.breaches,
            "stopped_at": self.stopped_at,
            "restored_step": self.restored_step,
        }
