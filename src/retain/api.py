"""``run``: train a model on a stream task by task, evaluate on every task after each one.

For each task: ``before_task`` hooks, a fresh (or kept) optimizer, ``fit_task``, ``after_task``
hooks, an evaluation on every task's test set (one row of R), and a checkpoint. Row 0 of R is the
model before any training. A ``joint`` run trains once on the union of all tasks instead.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from retain import strategies as registry
from retain.config import EvalConfig, RunConfig, TrainConfig, config_diff
from retain.data.stream import Stream, Task, TensorData
from retain.errors import ConfigError, RunDirError
from retain.eval.evaluator import evaluate
from retain.models import count_parameters
from retain.report.result import RunResult, build_record
from retain.strategies.base import Strategy
from retain.train.context import TaskContext
from retain.train.loop import NullProgress, fit_task
from retain.train.objectives import make_objective
from retain.train.optim import (
    Schedule,
    build_optimizer,
    carry_state,
    default_groups,
    load_state_by_name,
    steps_for,
)
from retain.utils.checkpoint import RunDir, is_main_process, load_weights, optimizer_state
from retain.utils.files import write_atomic
from retain.utils.seed import derive_seed, generator, seed_everything
from retain.utils.state import rng_state, set_rng_state, write_json


def make_accelerator(train: TrainConfig) -> Any:
    import os

    from accelerate import Accelerator

    # Accelerate forms a CPU process group (gloo) only when told to use the CPU: without CUDA, a
    # multi-process launch (torchrun, accelerate launch) would otherwise run N unrelated copies.
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cpu = train.cpu or (launched and not torch.cuda.is_available())
    return Accelerator(cpu=cpu, mixed_precision=train.mixed_precision)


def needs_wrappers(acc: Any) -> bool:
    """Whether the model and optimizer must go through ``accelerator.prepare``.

    With one process and no fp16 loss scaler the wrappers change nothing, but
    ``AcceleratedOptimizer`` inspects the wrapped optimizer's signature on every ``zero_grad``
    and checks package availability on every ``step``: at batch size 10 that was 40% of a step.
    Several processes (DDP, FSDP, DeepSpeed), fp16 and XLA always take the prepared path.
    """
    from accelerate.utils import DistributedType

    return (acc.num_processes > 1 or acc.scaler is not None
            or acc.distributed_type not in (DistributedType.NO, DistributedType.MULTI_CPU))


def _joint_task(stream: Stream) -> Task:
    vals = [t.val for t in stream.tasks if t.val is not None]
    return Task(
        name="joint",
        train=TensorData.concat([t.train for t in stream.tasks]),
        test=TensorData.concat([t.test for t in stream.tasks]),
        val=TensorData.concat(vals) if vals else None,
    )


def _peak_memory_mb(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _check_resume_config(run_dir: RunDir, config: RunConfig | None) -> None:
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


def run(
    model: nn.Module,
    stream: Stream,
    strategies: list[Strategy | dict[str, Any] | str] | None = None,
    train: TrainConfig | None = None,
    *,
    eval: EvalConfig | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    resume: bool = False,
    config: RunConfig | None = None,
    progress: Any = None,
    warn: Callable[[str], None] | None = None,
    keep_checkpoints: int = 1,
    checkpoints: bool = True,
) -> RunResult:
    """Train ``model`` on ``stream`` with ``strategies``; return the result and the trained model.

    Args:
        model: any ``nn.Module`` (logits for classification, predictions for regression) or a
            transformers causal LM (``stream.objective == "causal_lm"``).
        stream: the tasks, in order.
        strategies: instances, specs (``{"name": "ewc", "lam": 100}``) or names; default finetune.
        train: the loop's settings. eval: evaluation settings. seed: the run's seed.
        out_dir: run directory for result.json, checkpoints and reports (None: keep in memory).
        resume: continue the run in ``out_dir`` from its last finished task.
        config: the full config, written to ``config.resolved.yaml`` and checked on resume.
        progress: a progress display (see ``retain.utils.progress``). warn: called with warnings.

    Examples:
        >>> from retain.data.builtin import load_builtin
        >>> from retain.data.scenarios import split
        >>> stream = split(load_builtin("digits"), n_tasks=2, classes=[0, 1, 2, 3])
        >>> result = run(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), stream, ["finetune"])
        >>> len(result.matrix), len(result.matrix[0])
        (3, 2)
    """
    train = train or TrainConfig()
    eval = eval or EvalConfig()
    strategies = registry.build_all(list(strategies or ["finetune"]))
    warn = warn or (lambda msg: None)
    progress = progress or NullProgress()
    joint = any(s.joint for s in strategies)
    objective = make_objective(stream.objective, stream.n_outputs)
    metric = objective.default_metric if eval.metric == "auto" else eval.metric
    if eval.split == "val" and any(t.val is None or len(t.val) == 0 for t in stream.tasks):
        raise ConfigError("eval.split 'val' needs a validation split: set stream.validation, "
                          "e.g. stream.validation=0.1")
    if metric not in objective.metrics and metric != "loss":
        raise ConfigError(
            f"eval.metric '{metric}' does not apply to {stream.objective}; "
            f"choose one of {', '.join(objective.metrics)}"
        )
    warnings = []
    rehearsal = any(s.rehearsal for s in strategies)
    for s in strategies:
        if stream.setting in s.known_failures and not rehearsal:
            msg = f"'{s.name}' in the {stream.setting} setting: {s.known_failures[stream.setting]}"
            warnings.append(msg)
            warn(msg)

    run_dir = RunDir(out_dir) if out_dir is not None else None
    state = None
    if run_dir is not None:
        run_dir.ensure_new_or_resumable(resume)
        if resume:
            _check_resume_config(run_dir, config)
            state = run_dir.load_checkpoint()
        if config is not None and is_main_process():
            write_atomic(run_dir.path / "config.resolved.yaml", config.to_yaml())

    if train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    acc = make_accelerator(train)
    train_tasks = [_joint_task(stream)] if joint else list(stream.tasks)
    class_mask = stream.class_mask()
    if class_mask is not None:
        class_mask = class_mask.to(acc.device)

    def context(i: int) -> TaskContext:
        return TaskContext(
            stream=stream, task=train_tasks[i], task_index=i, objective=objective,
            accelerator=acc, train=train, seed=seed, generator=generator(seed, i, 7),
            class_mask=class_mask,
        )

    # Resume contract: strategy state first, then setup (which may rebuild structure), then weights.
    if state is not None:
        for s, st in zip(strategies, state["strategies"]):
            s.load_state_dict(st)
    model = model.to(acc.device)
    for s in strategies:
        model = s.setup(model, context(0))
    if state is not None:
        load_weights(model, state["model_path"])

    rows: list[list[dict[str, Any]]] = state["rows"] if state else []
    fits: list[dict[str, Any]] = state["fits"] if state else []
    params: list[int] = state["params"] if state else []
    strategy_stats: list[dict[str, Any]] = state.get("strategy_stats", []) if state else []
    schedule_offset = state["schedule_offset"] if state else 0
    start = state["tasks_done"] if state else 0
    started = state["started"] if state else datetime.now(timezone.utc).isoformat(timespec="seconds")
    world = acc.num_processes
    run_total = sum(steps_for(len(t.train), train, world) for t in train_tasks)

    def record(status: str) -> dict[str, Any]:
        return build_record(
            stream=stream, strategies=strategies, rows=rows, fits=fits, params=params,
            strategy_stats=strategy_stats,
            metric=metric, split=eval.split, joint=joint, seed=seed, config=config, train=train,
            warnings=warnings, started=started, status=status,
            memory=_peak_memory_mb(acc.device), device=str(acc.device), num_processes=world,
        )

    if not rows:
        rows.append(evaluate(model, stream, objective, acc, eval.batch_size, split=eval.split,
                             progress=progress, label="eval untrained"))
    optimizer = None
    if state is not None and state.get("rng"):
        set_rng_state(state["rng"])
    for i in range(start, len(train_tasks)):
        seed_everything(derive_seed(seed, i, 1))
        ctx = context(i)
        task = train_tasks[i]
        t_hooks = time.perf_counter()
        for s in strategies:
            model = s.before_task(model, ctx)
        hook_seconds = time.perf_counter() - t_hooks
        base = acc.unwrap_model(model)
        groups = default_groups(base)
        for s in strategies:
            groups = s.param_groups(groups, base, ctx)
        new_opt = build_optimizer(groups, train)
        if train.optimizer_state == "keep":
            if optimizer is not None:
                carry_state(optimizer, new_opt)
            elif state is not None and state.get("optimizer"):
                load_state_by_name(new_opt, state["optimizer"])
        if needs_wrappers(acc):
            acc.free_memory()  # drop the previous task's wrapped model and optimizer
            model, optimizer = acc.prepare(base, new_opt)
        else:
            model, optimizer = base.to(acc.device), new_opt
        ctx.model = model
        data = task.train
        for s in strategies:
            data = s.train_data(data, ctx)
        n_steps = steps_for(len(data), train, world)
        if train.schedule_scope == "run":
            schedule, offset = Schedule.from_config(train, run_total), schedule_offset
        else:
            schedule, offset = Schedule.from_config(train, n_steps), 0
        stats = fit_task(model, data, ctx, strategies, optimizer, schedule, offset, task.val, progress)
        schedule_offset += stats.steps
        t_hooks = time.perf_counter()
        for s in strategies:
            model = s.after_task(model, ctx)
        hook_seconds += time.perf_counter() - t_hooks
        t0 = time.perf_counter()
        rows.append(evaluate(model, stream, objective, acc, eval.batch_size, split=eval.split,
                             progress=progress, label=f"eval after {task.name}"))
        fits.append({
            "task": task.name, "steps": stats.steps, "samples": stats.samples,
            "train_seconds": stats.seconds, "hook_seconds": hook_seconds,
            "eval_seconds": time.perf_counter() - t0,
            "samples_per_s": stats.samples_per_s, "losses": stats.losses, "lrs": stats.lrs,
            "best_val_loss": stats.best_val_loss, "stopped_early_at": stats.stopped_early_at,
        })
        params.append(count_parameters(acc.unwrap_model(model)))
        strategy_stats.append({s.name or type(s).__name__: s.stats() for s in strategies})
        if run_dir is not None:
            if checkpoints and acc.is_main_process:
                run_dir.save_checkpoint(
                    i + 1, acc.unwrap_model(model), [s.state_dict() for s in strategies],
                    {"rows": rows, "fits": fits, "params": params, "schedule_offset": schedule_offset,
                     "started": started, "strategy_stats": strategy_stats},
                    optimizer_state(optimizer) if train.optimizer_state == "keep" else None,
                    rng_state(), keep_checkpoints,
                )
            if acc.is_main_process:
                write_json(run_dir.path / "result.json", record("running"))
    result = record("complete")
    if run_dir is not None and acc.is_main_process:
        write_json(run_dir.path / "result.json", result)
    return RunResult(result, acc.unwrap_model(model))
