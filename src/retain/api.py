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
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from retain import midtask
from retain.checkpointing import checkpoint, finish, restore
from retain.config import RunConfig
from retain.data.stream import Stream, Task
from retain.eval.evaluator import evaluate, evaluate_sets
from retain.eval.guard import Limit, TaskGuard
from retain.models import count_parameters
from retain.objectives import HIGHER_IS_BETTER, task_known
from retain.report.history import History
from retain.report.result import RunResult
from retain.run_state import Plan, RunState, start
from retain.strategies.base import Strategy
from retain.strategies.context import TaskContext
from retain.train.curriculum import realised, train_loader
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
from retain.train.tracking import Tracker
from retain.utils import snapshots
from retain.utils.seed import derive_seed, seed_everything
from retain.vocab import record_tokens, row_steps

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
    r = start(stream, strategies, config, out_dir, resume, progress, warn, model)
    if r.run_dir is not None and stream.vocab:  # before saved weights of another size load
        record_tokens(r.run_dir.path, stream.vocab, resume)
    r.initial = "pretrained" if _pretrained(model) else "untrained"
    model, history = restore(r, model)
    if resume:
        r.step_saved = midtask.load(r, history.tasks_done)
    if not history.rows:  # a fresh run: row 0 of R is the model before training
        history.rows.append(evaluate_all(r, model, f"eval {r.initial}"))
        history.suites.append(evaluate_suites(r, model))
        snapshot(r, model, 0, 0, end=True)
    r.tracker = Tracker.start(r.acc, r.cfg, _run_name(r, out_dir), history.schedule_offset)
    if r.tracker is not None and history.tasks_done == 0:
        r.tracker.row(0, r.stream.task_names, history.rows[0], r.metric, 0)
    optimizer = None
    for i in range(history.tasks_done, len(r.plan.tasks)):
        seed_everything(derive_seed(r.cfg.seed, i, 1))
        ctx = r.context(i)
        model, optimizer, ctx, hook_seconds = prepare_task(r, ctx, model, optimizer)
        stats, extra = train_task(r, ctx, model, optimizer, history.schedule_offset)
        if r.cfg.train.optimizer_state == "reset":
            # Freed before the after_task hooks: Adam's moments are two copies of the model, and
            # an EWC Fisher pass on a language model needs the room.
            optimizer = None
        model, after_seconds = finish_task(r, ctx, model)
        evaluate_task(r, history, model, ctx.task, stats, hook_seconds + after_seconds, extra)
        snapshot(r, model, i + 1, stats.steps, end=True)
        checkpoint(r, model, optimizer, history)
        midtask.drop_finished(r, history.tasks_done)
    result = finish(r, model, history)
    if r.tracker is not None:
        m = result.metrics
        r.tracker.end(history.schedule_offset, dataclasses.asdict(m) if m is not None else None)
    return result


def _run_name(r: RunState, out_dir: str | Path | None) -> str:
    """The run's name in a tracker: its folder (a comparison's strategy label), else the
    strategies' names."""
    if out_dir is not None:
        return Path(out_dir).name
    return "+".join(s.name or type(s).__name__ for s in r.strategies)


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
) -> tuple[FitStats, dict[str, Any]]:
    """``train_data`` hooks, the batches (mixing, order), the learning-rate schedule, and
    ``fit_task``; also the evaluations every ``eval.every_steps`` steps and the regression
    guard's checks, if set.

    Returns the loop's statistics and what the task's record keeps besides them: ``evals`` (the
    evaluations inside the task) and ``guard`` (what the guard did), when they exist.
    """
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
    loader, curriculum = train_loader(model, data, ctx, train)
    guard = task_guard(r, ctx)
    if guard is not None:
        guard.start(model)
    total = steps_for(len(data), train, r.acc.num_processes)
    # After everything above, which a resumed task redoes from the weights at its start.
    checkpoints = midtask.checkpoints(r, ctx, model, optimizer, loader, evals, guard)
    stats = fit_task(
        model,
        data,
        ctx,
        [*r.strategies, *row_steps(r.cfg.model.vocab, r.stream.vocab)],
        optimizer,
        schedule,
        train,
        r.acc,
        schedule_offset=offset,
        val=ctx.task.val,
        progress=r.progress,
        every=in_task_checks(r, evals, guard, snapshots_inside(r, ctx.task_index + 1, total)),
        loader=loader,
        tracker=r.tracker,
        checkpoints=checkpoints,
    )
    stats.curriculum = realised(loader, curriculum)
    extra: dict[str, Any] = {"evals": evals} if evals else {}
    if guard is not None:
        guard.finish(stats.steps, model)
        extra["guard"] = guard.record()
    return stats, extra


def evaluate_every(r: RunState, evals: list[dict[str, Any]]) -> Callable[[int, nn.Module], bool]:
    """Evaluate on every task (and every suite) at a step inside a task, appending
    ``{"step", "scores": [per task], "suites": {name: scores}}`` to ``evals``."""

    def call(step: int, model: nn.Module) -> bool:
        row = evaluate(
            model, r.stream, r.objective, r.acc, r.cfg.eval.batch_size, split=r.cfg.eval.split
        )
        point: dict[str, Any] = {
            "step": step,
            "scores": [{k: v for k, v in cell.items() if isinstance(v, float)} for cell in row],
        }
        if r.stream.suites:
            point["suites"] = evaluate_suites(r, model)
        evals.append(point)
        return False

    return call


def snapshot(r: RunState, model: nn.Module, task: int, step: int, end: bool) -> None:
    """A parameter snapshot (``output.snapshots``): task 0 is the model before training."""
    if r.run_dir is None or not r.cfg.output.snapshots or not r.acc.is_main_process:
        return
    name = r.plan.tasks[task - 1].name if task else "start"
    snapshots.save(r.run_dir.path, r.acc.unwrap_model(model), task, name, step, end)


def snapshots_inside(
    r: RunState, task: int, total: int
) -> tuple[int, Callable[[int, nn.Module], bool]] | None:
    """The ``output.snapshots - 1`` snapshots inside task ``task`` (1-based) of ``total`` steps."""
    n = r.cfg.output.snapshots
    interval = snapshots.every(total, n)
    if r.run_dir is None or interval is None:
        return None

    def call(step: int, model: nn.Module) -> bool:
        if snapshots.inside(step, total, n):
            snapshot(r, model, task, step, end=False)
        return False

    return interval, call


def in_task_checks(
    r: RunState,
    evals: list[dict[str, Any]],
    guard: TaskGuard | None,
    more: tuple[int, Callable[[int, nn.Module], bool]] | None = None,
) -> Every | None:
    """The work done every N steps inside a task: ``eval.every_steps`` evaluations, the
    guard's checks and ``more`` (parameter snapshots), each at its own interval; the guard's
    ``stop`` ends the task."""
    calls: list[tuple[int, Callable[[int, nn.Module], bool]]] = [more] if more else []
    if r.cfg.eval.every_steps is not None:
        calls.append((r.cfg.eval.every_steps, evaluate_every(r, evals)))
    if guard is not None and r.cfg.guard.every_steps is not None:
        calls.append((r.cfg.guard.every_steps, guard))
    if not calls:
        return None

    def call(step: int, model: nn.Module) -> bool:
        stop = False
        for n, fn in calls:  # evaluations first: they record the weights the guard judged
            if step % n == 0:
                stop = fn(step, model) or stop
        return stop

    return Every(math.gcd(*(n for n, _ in calls)), call)


def task_guard(r: RunState, ctx: TaskContext) -> TaskGuard | None:
    """The regression guard of task ``ctx.task_index``: every watched suite, and the watched
    tasks before it (none for the joint reference, which has no earlier task)."""
    g = r.cfg.guard
    if r.guard_metric is None:
        return None
    earlier = set() if r.plan.joint else set(r.stream.task_names[: ctx.task_index])
    names = [n for n in g.names if n in r.stream.suites or n in earlier]
    if not names:
        return None
    rel, ab = g.relative or {}, g.absolute or {}
    limits = [Limit(n, rel.get(n), ab.get(n)) for n in names]
    tasks = {t.name: t for t in r.stream.tasks}

    def score(model: nn.Module) -> dict[str, dict[str, float]]:
        out = evaluate_suites(r, model)  # every suite: the trajectory records them all
        watched = {n: getattr(tasks[n], r.cfg.eval.split) for n in names if n in tasks}
        if watched:
            known = task_known(r.stream.setting)
            bs = r.cfg.eval.batch_size
            out.update(evaluate_sets(model, watched, r.objective, r.acc, bs, r.class_mask, known))
        return out

    return TaskGuard(
        ctx.task.name,
        limits,
        r.guard_metric,
        HIGHER_IS_BETTER[r.guard_metric],
        g.action,
        score,
        r.acc.unwrap_model,
        r.warn,
    )


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


def evaluate_suites(r: RunState, model: nn.Module) -> dict[str, dict[str, float]]:
    """The model's scores on every evaluation suite of the stream (``{}`` when it has none)."""
    if not r.stream.suites:
        return {}
    return evaluate_sets(model, r.stream.suites, r.objective, r.acc, r.cfg.eval.batch_size)


def evaluate_task(
    r: RunState,
    history: History,
    model: nn.Module,
    task: Task,
    stats: FitStats,
    hook_seconds: float,
    extra: dict[str, Any],
) -> None:
    """One row of R (and the suites' scores) after ``task``, and what the record keeps of its
    training."""
    t0 = time.perf_counter()
    row = evaluate_all(r, model, f"eval after {task.name}")
    suites = evaluate_suites(r, model)
    fit = fit_entry(task, stats, hook_seconds, time.perf_counter() - t0, extra)
    history.add(row, fit, count_parameters(r.acc.unwrap_model(model)), r.strategies, suites)
    if r.tracker is not None:
        seen = len(r.stream.tasks) if r.plan.joint else history.tasks_done
        r.tracker.row(history.schedule_offset, r.stream.task_names, row, r.metric, seen)


def fit_entry(
    task: Task,
    stats: FitStats,
    hook_seconds: float,
    eval_seconds: float,
    extra: dict[str, Any],
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
    entry.update(extra)  # evals, guard
    if stats.curriculum:
        entry["curriculum"] = stats.curriculum
    return entry
