"""``run``: train a model on a stream task by task, evaluate on every task after each one.

The run reads top to bottom: ``start`` (check the settings, open the run directory, make the
accelerator and the plan: :mod:`retain.run_state`), ``restore`` (strategy state, ``setup`` hooks,
saved weights, the history so far: :mod:`retain.checkpointing`), row 0 of R (the model before any
training), then for each task of the plan ``prepare_task`` (``before_task`` hooks, the optimizer,
Accelerate's wrappers), ``train_task`` (``fit_task``), ``finish_task`` (``after_task`` hooks),
``evaluate_task`` (one row of R), ``checkpoint``; and ``finish`` (the record).

The plan is what the run trains on: the stream's tasks one by one, or, for the ``joint``
reference, one task holding all of them; evaluation is on the stream's tasks either way.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from retain.checkpointing import checkpoint, finish, restore
from retain.config import RunConfig
from retain.data.stream import Stream, Task
from retain.eval.evaluator import evaluate
from retain.models import count_parameters
from retain.report.history import History
from retain.report.result import RunResult
from retain.run_state import Plan, RunState, start
from retain.strategies.base import Strategy
from retain.strategies.context import TaskContext
from retain.train.loop import Every, FitStats, fit_task
from retain.train.optim import (
    Schedule,
    build_optimizer,
    carry_state,
    default_groups,
    load_state_by_name,
    steps_for,
)
from retain.train.runtime import needs_wrappers
from retain.utils.seed import derive_seed, seed_everything

__all__ = ["Plan", "run"]  # Plan: what a run trains on, also planned ahead by compare


def run(
    model: nn.Module,
    stream: Stream,
    strategies: list[Strategy | dict[str, Any] | str] | None = None,
    config: RunConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: Any = None,
    warn: Callable[[str], None] | None = None,
) -> RunResult:
    """Train ``model`` on ``stream`` with ``strategies``; return the result and the trained model.

    Args:
        model: any ``nn.Module`` (logits for classification, predictions for regression) or a
            transformers causal LM (``stream.objective == "causal_lm"``).
        stream: the tasks, in order.
        strategies: instances, specs (``{"name": "ewc", "lam": 100}``) or names; default
            ``config.strategies`` (finetune).
        config: the run's settings (``train``, ``eval``, ``seed``, ``output``); given, it is also
            written to ``config.resolved.yaml`` and checked on resume. Default ``RunConfig()``.
        out_dir: run directory for result.json, checkpoints and reports (None: keep in memory).
        resume: continue the run in ``out_dir`` from its last finished task.
        progress: a progress display (see ``retain.utils.progress``). warn: called with warnings.

    Examples:
        >>> from retain.config import TrainConfig
        >>> from retain.data.builtin import load_builtin
        >>> from retain.data.scenarios import split
        >>> stream = split(load_builtin("digits"), n_tasks=2, classes=[0, 1, 2, 3])
        >>> result = run(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), stream, ["finetune"],
        ...              RunConfig(train=TrainConfig(epochs=1)))
        >>> len(result.matrix), len(result.matrix[0])
        (3, 2)
    """
    if isinstance(config, RunConfig) and config.train.gradient_checkpointing:
        from retain.utils.hf import enable_gradient_checkpointing

        enable_gradient_checkpointing(model)  # refused before the run directory is made
    r = start(stream, strategies, config, out_dir, resume, progress, warn)
    r.initial = "pretrained" if _pretrained(model) else "untrained"
    model, history = restore(r, model)
    if not history.rows:  # a fresh run: row 0 of R is the model before training
        history.rows.append(evaluate_all(r, model, f"eval {r.initial}"))
    optimizer = None
    for i in range(history.tasks_done, len(r.plan.tasks)):
        seed_everything(derive_seed(r.cfg.seed, i, 1))
        ctx = r.context(i)
        model, optimizer, ctx, hook_seconds = prepare_task(r, ctx, model, optimizer)
        stats, evals = train_task(r, ctx, model, optimizer, history.schedule_offset)
        if r.cfg.train.optimizer_state == "reset":
            # Freed before the after_task hooks: Adam's moments are two copies of the model, and
            # an EWC Fisher pass on a language model needs the room.
            optimizer = None
        model, after_seconds = finish_task(r, ctx, model)
        evaluate_task(r, history, model, ctx.task, stats, hook_seconds + after_seconds, evals)
        checkpoint(r, model, optimizer, history)
    return finish(r, model, history)


def _pretrained(model: nn.Module) -> bool:
    """A transformers model loaded with weights (``from_pretrained``): R's row 0 is then the
    pretrained model, not an untrained one."""
    config = getattr(model, "config", None)
    return bool(getattr(config, "_name_or_path", "") or "")


def prepare_task(
    r: RunState, ctx: TaskContext, model: nn.Module, optimizer: Any
) -> tuple[nn.Module, Any, TaskContext, float]:
    """``before_task`` hooks, a fresh optimizer (or the kept one's state), Accelerate's wrappers.

    Returns the model and optimizer to train, the context with ``model`` set, and the seconds
    spent in the hooks.
    """
    t0 = time.perf_counter()
    for s in r.strategies:
        model = s.before_task(model, ctx)
    hook_seconds = time.perf_counter() - t0
    base = r.acc.unwrap_model(model)
    groups = default_groups(base)
    for s in r.strategies:
        groups = s.param_groups(groups, base, ctx)
    new_opt = build_optimizer(groups, r.cfg.train)
    if r.cfg.train.optimizer_state == "keep":
        if optimizer is not None:
            carry_state(optimizer, new_opt)
        elif r.saved is not None and r.saved.get("optimizer"):
            load_state_by_name(new_opt, r.saved["optimizer"])
    if needs_wrappers(r.acc):
        r.acc.free_memory()  # drop the previous task's wrapped model and optimizer
        model, optimizer = r.acc.prepare(base, new_opt)
    else:
        model, optimizer = base.to(r.acc.device), new_opt
    return model, optimizer, dataclasses.replace(ctx, model=model), hook_seconds


def train_task(
    r: RunState, ctx: TaskContext, model: nn.Module, optimizer: Any, schedule_offset: int
) -> tuple[FitStats, list[dict[str, Any]]]:
    """``train_data`` hooks, the learning-rate schedule, and ``fit_task``; also the evaluations
    every ``eval.every_steps`` steps, if set."""
    train = r.cfg.train
    data = ctx.task.train
    for s in r.strategies:
        data = s.train_data(data, ctx)
    if train.schedule_scope == "run":
        world = r.acc.num_processes
        run_total = sum(steps_for(len(t.train), train, world) for t in r.plan.tasks)
        schedule, offset = Schedule.from_config(train, run_total), schedule_offset
    else:
        schedule = Schedule.from_config(train, steps_for(len(data), train, r.acc.num_processes))
        offset = 0
    evals: list[dict[str, Any]] = []
    stats = fit_task(
        model,
        data,
        ctx,
        r.strategies,
        optimizer,
        schedule,
        train,
        r.acc,
        schedule_offset=offset,
        val=ctx.task.val,
        progress=r.progress,
        every=evaluate_every(r, evals),
    )
    return stats, evals


def evaluate_every(r: RunState, evals: list[dict[str, Any]]) -> Every | None:
    """With ``eval.every_steps``: evaluate on every task every N steps, appending
    ``{"step", "scores": [per task]}`` to ``evals``. The hook point for a regression guard."""
    if r.cfg.eval.every_steps is None:
        return None

    def call(step: int, model: nn.Module) -> bool:
        row = evaluate(
            model, r.stream, r.objective, r.acc, r.cfg.eval.batch_size, split=r.cfg.eval.split
        )
        evals.append(
            {
                "step": step,
                "scores": [{k: v for k, v in cell.items() if isinstance(v, float)} for cell in row],
            }
        )
        return False

    return Every(r.cfg.eval.every_steps, call)


def finish_task(r: RunState, ctx: TaskContext, model: nn.Module) -> tuple[nn.Module, float]:
    """``after_task`` hooks (Fisher, buffer update, merging); returns the seconds they took."""
    t0 = time.perf_counter()
    for s in r.strategies:
        model = s.after_task(model, ctx)
    return model, time.perf_counter() - t0


def evaluate_all(r: RunState, model: nn.Module, label: str) -> list[dict[str, Any]]:
    """One row of R: the model's scores on every task of the stream."""
    return evaluate(
        model,
        r.stream,
        r.objective,
        r.acc,
        r.cfg.eval.batch_size,
        split=r.cfg.eval.split,
        progress=r.progress,
        label=label,
    )


def evaluate_task(
    r: RunState,
    history: History,
    model: nn.Module,
    task: Task,
    stats: FitStats,
    hook_seconds: float,
    evals: list[dict[str, Any]],
) -> None:
    """One row of R after ``task``, and what the record keeps of its training."""
    t0 = time.perf_counter()
    row = evaluate_all(r, model, f"eval after {task.name}")
    fit = fit_entry(task, stats, hook_seconds, time.perf_counter() - t0, evals)
    history.add(row, fit, count_parameters(r.acc.unwrap_model(model)), r.strategies)


def fit_entry(
    task: Task,
    stats: FitStats,
    hook_seconds: float,
    eval_seconds: float,
    evals: list[dict[str, Any]],
) -> dict[str, Any]:
    """What the record keeps of one task's training."""
    entry = {
        "task": task.name,
        "steps": stats.steps,
        "samples": stats.samples,
        "train_seconds": stats.seconds,
        "hook_seconds": hook_seconds,
        "eval_seconds": eval_seconds,
        "samples_per_s": stats.samples_per_s,
        "tokens": stats.tokens,
        "tokens_per_s": stats.tokens_per_s,
        "losses": stats.losses,
        "lrs": stats.lrs,
        "best_val_loss": stats.best_val_loss,
        "stopped_early_at": stats.stopped_early_at,
    }
    if evals:
        entry["evals"] = evals
    return entry
