"""``run``: train a model on a stream task by task, evaluate on every task after each one.

The run reads top to bottom: ``start`` (check the settings, open the run directory, make the
accelerator and the plan), ``restore`` (strategy state, ``setup`` hooks, saved weights, the
history so far), then for each task of the plan ``prepare_task`` (``before_task`` hooks, the
optimizer, Accelerate's wrappers), ``train_task`` (``fit_task``), ``finish_task`` (``after_task``
hooks), ``evaluate_task`` (one row of R), ``checkpoint``; and ``finish`` (the record).

The plan is what the run trains on: the stream's tasks one by one, or, for the ``joint``
reference, one task holding all of them; evaluation is on the stream's tasks either way. Row 0 of
R is the model before any training.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from retain import strategies as registry
from retain.config import RunConfig, config_diff
from retain.data.stream import Stream, Task, TensorData
from retain.errors import ConfigError, RunDirError
from retain.eval.evaluator import evaluate
from retain.models import count_parameters
from retain.objectives import make_objective
from retain.report.record import RunRecord
from retain.report.result import RunResult, build_record
from retain.strategies.base import Strategy
from retain.strategies.context import TaskContext
from retain.strategies.joint import Joint
from retain.train.loop import Every, FitStats, NullProgress, fit_task
from retain.train.optim import (
    Schedule,
    build_optimizer,
    carry_state,
    default_groups,
    load_state_by_name,
    steps_for,
)
from retain.train.runtime import make_accelerator, needs_wrappers, task_context
from retain.utils.checkpoint import RunDir, is_main_process, load_weights, optimizer_state
from retain.utils.files import write_atomic
from retain.utils.seed import derive_seed, generator, seed_everything
from retain.utils.state import rng_state, set_rng_state, write_json


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
    r = start(stream, strategies, config, out_dir, resume, progress, warn)
    model, history = restore(r, model)
    optimizer = None
    for i in range(history.tasks_done, len(r.plan.tasks)):
        seed_everything(derive_seed(r.cfg.seed, i, 1))
        ctx = r.context(i)
        model, optimizer, ctx, hook_seconds = prepare_task(r, ctx, model, optimizer)
        stats, evals = train_task(r, ctx, model, optimizer, history.schedule_offset)
        model, after_seconds = finish_task(r, ctx, model)
        evaluate_task(r, history, model, ctx.task, stats, hook_seconds + after_seconds, evals)
        checkpoint(r, model, optimizer, history)
    return finish(r, model, history)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """What a run trains on, in order; evaluation is on every task of the stream either way."""

    tasks: tuple[Task, ...]
    joint: bool = False

    @classmethod
    def for_strategies(cls, stream: Stream, strategies: list[Strategy]) -> Plan:
        """The stream's tasks one by one, or one union task for the ``joint`` reference."""
        if any(isinstance(s, Joint) for s in strategies):
            return cls((union_task(stream),), joint=True)
        return cls(tuple(stream.tasks))


def union_task(stream: Stream) -> Task:
    vals = [t.val for t in stream.tasks if t.val is not None]
    return Task(
        name="joint",
        train=TensorData.concat([t.train for t in stream.tasks]),
        test=TensorData.concat([t.test for t in stream.tasks]),
        val=TensorData.concat(vals) if vals else None,
    )


# --------------------------------------------------------------------------- run state


@dataclass
class RunState:
    """What every step of one run shares: the settings, the stream, the accelerator, the plan."""

    stream: Stream
    strategies: list[Strategy]
    cfg: RunConfig
    config: RunConfig | None  # as given: written, recorded and checked on resume
    plan: Plan
    objective: Any
    metric: str
    acc: Any
    run_dir: RunDir | None
    progress: Any
    warnings: list[str]
    saved: dict[str, Any] | None = None  # the checkpoint resumed from
    class_mask: torch.Tensor | None = None

    def context(self, i: int) -> TaskContext:
        return task_context(
            self.acc,
            self.cfg.train,
            self.stream,
            self.plan.tasks[i],
            i,
            self.objective,
            self.cfg.seed,
            generator(self.cfg.seed, i, 7),
            self.class_mask,
        )


@dataclass
class History:
    """The run so far: what a checkpoint saves beside weights, strategy and optimizer state."""

    rows: list[list[dict[str, Any]]] = field(default_factory=list)
    fits: list[dict[str, Any]] = field(default_factory=list)
    params: list[int] = field(default_factory=list)
    strategy_stats: list[dict[str, Any]] = field(default_factory=list)
    schedule_offset: int = 0
    started: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )

    @property
    def tasks_done(self) -> int:
        return len(self.fits)

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> History:
        return cls(
            state["rows"],
            state["fits"],
            state["params"],
            state.get("strategy_stats", []),
            state["schedule_offset"],
            state["started"],
        )

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "fits": self.fits,
            "params": self.params,
            "schedule_offset": self.schedule_offset,
            "started": self.started,
            "strategy_stats": self.strategy_stats,
        }

    def add(
        self,
        row: list[dict[str, Any]],
        fit: dict[str, Any],
        params: int,
        strategies: list[Strategy],
    ) -> None:
        self.rows.append(row)
        self.fits.append(fit)
        self.schedule_offset += fit["steps"]
        self.params.append(params)
        self.strategy_stats.append({s.name or type(s).__name__: s.stats() for s in strategies})


# --------------------------------------------------------------------------- the steps


def start(
    stream: Stream,
    strategies: list[Any] | None,
    config: RunConfig | None,
    out_dir: str | Path | None,
    resume: bool,
    progress: Any,
    warn: Callable[[str], None] | None,
) -> RunState:
    """Check the settings, open the run directory, make the accelerator and the plan."""
    cfg = config or RunConfig()
    if not isinstance(cfg, RunConfig):
        raise TypeError(
            f"run() takes a RunConfig, got {type(cfg).__name__}; wrap it, e.g. "
            "RunConfig(train=TrainConfig(...))"
        )
    built = registry.build_all(list(strategies or cfg.strategies))
    objective = make_objective(stream.objective, stream.n_outputs)
    metric = check_eval(cfg, stream, objective)
    warnings = known_failures(stream, built, warn or (lambda msg: None))
    run_dir = RunDir(out_dir) if out_dir is not None else None
    saved = open_run_dir(run_dir, resume, config)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    acc = make_accelerator(cfg.train)
    class_mask = stream.class_mask()
    return RunState(
        stream,
        built,
        cfg,
        config,
        Plan.for_strategies(stream, built),
        objective,
        metric,
        acc,
        run_dir,
        progress or NullProgress(),
        warnings,
        saved,
        class_mask.to(acc.device) if class_mask is not None else None,
    )


def check_eval(cfg: RunConfig, stream: Stream, objective: Any) -> str:
    """The metric of R (``eval.metric``, or the objective's default); errors for bad settings."""
    metric = objective.default_metric if cfg.eval.metric == "auto" else cfg.eval.metric
    if cfg.eval.split == "val" and any(t.val is None or len(t.val) == 0 for t in stream.tasks):
        raise ConfigError(
            "eval.split 'val' needs a validation split: set stream.validation, "
            "e.g. stream.validation=0.1"
        )
    if metric not in objective.metrics and metric != "loss":
        raise ConfigError(
            f"eval.metric '{metric}' does not apply to {stream.objective}; "
            f"choose one of {', '.join(objective.metrics)}"
        )
    return metric


def known_failures(
    stream: Stream, strategies: list[Strategy], warn: Callable[[str], None]
) -> list[str]:
    """Warnings for strategies known not to work in the stream's setting (not with rehearsal)."""
    if any(s.rehearsal for s in strategies):
        return []
    warnings = []
    for s in strategies:
        if stream.setting in s.known_failures:
            warnings.append(
                f"'{s.name}' in the {stream.setting} setting: {s.known_failures[stream.setting]}"
            )
            warn(warnings[-1])
    return warnings


def restore(r: RunState, model: nn.Module) -> tuple[nn.Module, History]:
    """Strategy state, ``setup`` hooks and weights; the history so far.

    Resume contract: strategy state first, then setup (which may rebuild structure), then
    weights. A fresh run evaluates the untrained model (row 0 of R).
    """
    saved = r.saved
    if saved is not None:
        for s, st in zip(r.strategies, saved["strategies"]):
            s.load_state_dict(st)
    model = model.to(r.acc.device)
    ctx = r.context(0)
    for s in r.strategies:
        model = s.setup(model, ctx)
    if saved is not None:
        load_weights(model, saved["model_path"])
    history = History.from_checkpoint(saved) if saved is not None else History()
    if not history.rows:
        history.rows.append(evaluate_all(r, model, "eval untrained"))
    if saved is not None and saved.get("rng"):
        set_rng_state(saved["rng"])
    return model, history


def open_run_dir(
    run_dir: RunDir | None, resume: bool, config: RunConfig | None
) -> dict[str, Any] | None:
    """Check the run directory, write the config; the checkpoint to resume from (or None)."""
    if run_dir is None:
        return None
    run_dir.ensure_new_or_resumable(resume)
    saved = None
    if resume:
        check_resume_config(run_dir, config)
        saved = run_dir.load_checkpoint()
    if config is not None and is_main_process():
        write_atomic(run_dir.path / "config.resolved.yaml", config.to_yaml())
    return saved


def check_resume_config(run_dir: RunDir, config: RunConfig | None) -> None:
    path = run_dir.path / "config.resolved.yaml"
    if config is None or not path.is_file():
        return
    saved = yaml.safe_load(path.read_text()) or {}
    now = config.to_dict()
    for d in (saved, now):
        d.get("output", {}).pop("dir", None)
    diff = config_diff(saved, now)
    if diff:
        raise RunDirError(
            f"the config differs from the run being resumed in '{run_dir.path}' ({'; '.join(diff[:3])}); "
            "resume with the same config, or start a new run with another --out"
        )


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
        "losses": stats.losses,
        "lrs": stats.lrs,
        "best_val_loss": stats.best_val_loss,
        "stopped_early_at": stats.stopped_early_at,
    }
    if evals:
        entry["evals"] = evals
    return entry


def checkpoint(r: RunState, model: nn.Module, optimizer: Any, history: History) -> None:
    """Weights, strategy state, optimizer (when kept), RNG and history; result.json so far."""
    if r.run_dir is None or not r.acc.is_main_process:
        return
    out = r.cfg.output
    if out.checkpoints:
        kept = optimizer_state(optimizer) if r.cfg.train.optimizer_state == "keep" else None
        r.run_dir.save_checkpoint(
            history.tasks_done,
            r.acc.unwrap_model(model),
            [s.state_dict() for s in r.strategies],
            history.to_checkpoint(),
            kept,
            rng_state(),
            out.keep_checkpoints,
        )
    write_json(r.run_dir.path / "result.json", record(r, history, "running"))


def finish(r: RunState, model: nn.Module, history: History) -> RunResult:
    """The complete record, also written to result.json, and the trained model."""
    result = record(r, history, "complete")
    if r.run_dir is not None and r.acc.is_main_process:
        write_json(r.run_dir.path / "result.json", result)
    return RunResult(result, r.acc.unwrap_model(model))


def record(r: RunState, history: History, status: str) -> RunRecord:
    """The run record (what result.json holds) for the history so far."""
    rec = build_record(
        stream=r.stream,
        strategies=r.strategies,
        rows=history.rows,
        fits=history.fits,
        params=history.params,
        strategy_stats=history.strategy_stats,
        metric=r.metric,
        split=r.cfg.eval.split,
        joint=r.plan.joint,
        seed=r.cfg.seed,
        config=r.config,
        train=r.cfg.train,
        warnings=r.warnings,
        started=history.started,
        status=status,
        memory=peak_memory_mb(r.acc.device),
        device=str(r.acc.device),
        num_processes=r.acc.num_processes,
    )
    if any("evals" in f for f in history.fits):
        rec.curves.eval = [f.get("evals", []) for f in history.fits]
    return rec


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
