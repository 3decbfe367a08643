"""What every step of a run shares, and ``start``, which makes it.

``start`` checks the settings, opens the run directory (the checkpoint to resume from, the
resolved config), makes the accelerator and the plan. The plan is what the run trains on: the
stream's tasks one by one, or, for the ``joint`` reference, one task holding all of them;
evaluation is on the stream's tasks either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from retain import strategies as registry
from retain.config import RunConfig
from retain.data.stream import Stream, Task, TensorData
from retain.errors import ConfigError, did_you_mean
from retain.objectives import make_objective
from retain.report.result import RunFacts
from retain.resume import adopt, check_config, check_target
from retain.strategies.base import Strategy
from retain.strategies.context import TaskContext
from retain.strategies.joint import Joint
from retain.train.loop import NullProgress
from retain.train.runtime import make_accelerator, task_context
from retain.train.tracking import check_installed
from retain.utils.checkpoint import RunDir, is_main_process
from retain.utils.files import write_atomic
from retain.utils.integrity import Expect
from retain.utils.seed import generator


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
    warn: Callable[[str], None] = lambda msg: None
    guard_metric: str | None = None  # the score the regression guard watches, when it is on
    initial: str = "untrained"  # what row 0 of R scores: "untrained" or "pretrained"
    tracker: Any = None  # train.log_with: the run's experiment trackers (train/tracking.py)
    step_saved: dict[str, Any] | None = None  # the mid-task checkpoint resumed from (midtask)

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
            len(self.plan.tasks),
        )

    def facts(self) -> RunFacts:
        """What the run record states about this run besides its history."""
        return RunFacts(
            self.stream,
            self.strategies,
            self.cfg,
            self.config,
            self.metric,
            self.plan.joint,
            self.warnings,
            str(self.acc.device),
            self.acc.num_processes,
            self.initial,
        )


def start(
    stream: Stream,
    strategies: list[Any] | None,
    config: RunConfig | None,
    out_dir: str | Path | None,
    resume: bool,
    progress: Any,
    warn: Callable[[str], None] | None,
    model: Any = None,
) -> RunState:
    """Check the settings (every strategy against the stream and ``model``), open the run
    directory, make the accelerator and the plan."""
    cfg = config or RunConfig()
    if not isinstance(cfg, RunConfig):
        raise TypeError(
            f"run() takes a RunConfig, got {type(cfg).__name__}; wrap it, e.g. "
            "RunConfig(train=TrainConfig(...))"
        )
    built = registry.build_all(list(strategies or cfg.strategies))
    for s in built:  # before the run directory is opened: a refusal leaves nothing behind
        s.check(stream)
        if model is not None:
            s.check_model(model)
    objective = make_objective(stream.objective, stream.n_outputs)
    metric = check_eval(cfg, stream, objective)
    guard_metric = check_guard(cfg, stream, objective, metric)
    warnings = known_failures(stream, built, warn or (lambda msg: None))
    check_installed(cfg.train)
    plan = Plan.for_strategies(stream, built)

    def note(msg: str) -> None:  # a warning that result.json also keeps
        warnings.append(msg)
        (warn or (lambda m: None))(msg)

    run_dir = RunDir(out_dir) if out_dir is not None else None
    expect = Expect(len(plan.tasks), len(stream.tasks), len(built), metric)
    saved = open_run_dir(run_dir, resume, config, expect, note)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    acc = make_accelerator(cfg.train, run_dir.path if run_dir is not None else None)
    class_mask = stream.class_mask()
    return RunState(
        stream,
        built,
        cfg,
        config,
        plan,
        objective,
        metric,
        acc,
        run_dir,
        progress or NullProgress(),
        warnings,
        saved,
        class_mask.to(acc.device) if class_mask is not None else None,
        warn or (lambda msg: None),
        guard_metric,
    )


def check_settings(cfg: RunConfig, stream: Stream) -> None:
    """The checks of ``eval`` and ``guard`` that ``start`` makes, for a caller that wants them
    before anything else happens (a comparison checks them before its first run)."""
    objective = make_objective(stream.objective, stream.n_outputs)
    check_guard(cfg, stream, objective, check_eval(cfg, stream, objective))


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
    # Early stopping watches the validation loss; without a split it would silently never stop.
    if cfg.train.patience is not None and any(
        t.val is None or len(t.val) == 0 for t in stream.tasks
    ):
        raise ConfigError(
            "train.patience stops on the validation loss, and the stream has no validation "
            "split: set stream.validation, e.g. stream.validation=0.1, or drop train.patience"
        )
    return metric


def check_guard(cfg: RunConfig, stream: Stream, objective: Any, metric: str) -> str | None:
    """The score the regression guard watches (None when it is off); errors for names that are
    neither a suite nor a task, and for a score the objective does not compute."""
    guard = cfg.guard
    if not guard.active:
        return None
    known = [*stream.suites, *stream.task_names]
    for name in guard.names:
        if name not in known:
            raise ConfigError(
                f"guard: '{name}' is neither an evaluation suite nor a task"
                f"{did_you_mean(name, known)}; the suites are "
                f"{', '.join(stream.suites) or 'none (set stream.suites)'}, the tasks "
                f"{', '.join(stream.task_names)}"
            )
    watched = guard.metric if guard.metric != "auto" else metric
    if watched == "task_il_accuracy":  # a view of R only: suites and checks have no task
        watched = "accuracy" if guard.metric == "auto" else watched
        if guard.metric != "auto":
            raise ConfigError("guard.metric task_il_accuracy is not checked; use accuracy")
    if watched not in objective.metrics and watched != "loss":
        raise ConfigError(
            f"guard.metric '{watched}' does not apply to {stream.objective}; "
            f"choose one of {', '.join(objective.metrics)}"
        )
    return watched


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


def open_run_dir(
    run_dir: RunDir | None,
    resume: bool,
    config: RunConfig | None,
    expect: Expect | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any] | None:
    """Check the run directory (what it is, its config, its checkpoint: :mod:`retain.resume`),
    write the config; the checkpoint to resume from (or None)."""
    if run_dir is None:
        if resume:  # it would silently train a new run instead
            raise ConfigError("resume continues the run in out_dir: give out_dir")
        return None
    resuming = check_target(run_dir.path, "run", resume)
    run_dir.ensure_new_or_resumable(resume)
    saved = None
    if resuming:
        check_config(run_dir.path, config)
        saved = run_dir.load_checkpoint(expect, warn)
    if is_main_process():
        if resuming:
            adopt(run_dir.path, "run")
        if config is not None:
            write_atomic(run_dir.path / "config.resolved.yaml", config.to_yaml())
    return saved
