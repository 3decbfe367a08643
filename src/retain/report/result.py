"""Building the run record from a run's facts and history, and :class:`RunResult`.

The record's fields and its JSON form (``result.json``, the source of truth that every report
renders) are in :mod:`retain.report.record`.
"""

from __future__ import annotations

import contextlib
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retain.eval import metrics as M
from retain.objectives import HIGHER_IS_BETTER
from retain.report.record import (
    Curves,
    EarlyStop,
    GuardTask,
    Memory,
    Metrics,
    Params,
    PerClass,
    RunRecord,
    StreamInfo,
    TaskTiming,
    Timing,
    TrainSummary,
)

if TYPE_CHECKING:
    from torch import nn

    from retain.config import RunConfig, TrainConfig
    from retain.data.stream import Stream
    from retain.report.history import History
    from retain.strategies.base import Strategy


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("retain", "torch", "accelerate", "numpy", "safetensors", "transformers", "peft"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def git_sha() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def matrix_of(rows: list[list[dict[str, Any]]], key: str) -> list[list[float]]:
    return [[float(cell[key]) for cell in row] for row in rows]


def scores_metrics(matrices: dict[str, list[list[float]]], score: str, joint: bool) -> Metrics:
    R = matrices[score]
    return Metrics(**(M.joint_summary(R[-1]) if joint else M.summary(R, HIGHER_IS_BETTER[score])))


def stream_info(stream: Stream) -> StreamInfo:
    return StreamInfo(
        name=stream.name,
        setting=stream.setting,
        objective=stream.objective,
        n_outputs=stream.n_outputs,
        class_names=list(stream.class_names) if stream.class_names else None,
    )


def timing_of(fits: list[dict[str, Any]]) -> Timing:
    """Per-task and total timing from the loop's per-task statistics."""
    per_task = [
        TaskTiming(
            task=f["task"],
            steps=f["steps"],
            samples=f["samples"],
            train_seconds=f["train_seconds"],
            eval_seconds=f["eval_seconds"],
            samples_per_s=f["samples_per_s"],
            hook_seconds=f.get("hook_seconds", 0.0),
            tokens_per_s=f.get("tokens_per_s"),
        )  # older checkpoints lack it
        for f in fits
    ]
    train_s = sum(t.train_seconds for t in per_task)
    tokens = [f.get("tokens") for f in fits]
    return Timing(
        per_task=per_task,
        train_seconds=train_s,
        hook_seconds=sum(t.hook_seconds for t in per_task),
        eval_seconds=sum(t.eval_seconds for t in per_task),
        samples_per_s=sum(f["samples"] for f in fits) / train_s if train_s > 0 else 0.0,
        tokens_per_s=sum(tokens) / train_s if train_s > 0 and None not in tokens else None,
    )


@dataclass(frozen=True)
class RunFacts:
    """What a run record states besides the run's history: what was run, how, and where."""

    stream: Stream
    strategies: list[Strategy]
    cfg: RunConfig  # the settings the run used (seed, train, eval.split)
    config: RunConfig | None  # as given to the run: its name and settings are recorded
    metric: str  # the score of R
    joint: bool = False
    warnings: list[str] = field(default_factory=list)
    device: str = "cpu"
    num_processes: int = 1
    initial: str = "untrained"  # the model R's row 0 scores: "untrained" or "pretrained"


def build_record(
    facts: RunFacts, history: History, status: str, memory: dict[str, float]
) -> RunRecord:
    """The run's record from its history so far (``rows[i][j]``: scores of task j after step i,
    and the loop's per-task statistics); metrics once every row exists. ``memory``: the peak
    memory so far, in MB."""
    from retain.strategies import label

    stream, rows, fits, config = facts.stream, history.rows, history.fits, facts.config
    matrices = score_matrices(rows)
    complete = len(rows) == (2 if facts.joint else len(stream.tasks) + 1)
    return RunRecord(
        name=config.name if config and config.name else stream.name,
        strategy=label(facts.strategies),
        strategies=[s.spec() for s in facts.strategies],
        joint=facts.joint,
        initial=facts.initial if facts.initial != "untrained" else None,
        stream=stream_info(stream),
        tasks=stream.task_names,
        task_classes=[list(t.classes) if t.classes is not None else None for t in stream.tasks],
        score=facts.metric,
        split=facts.cfg.eval.split,
        higher_is_better=HIGHER_IS_BETTER[facts.metric],
        matrix=matrices.get(facts.metric, []),
        matrices=matrices,
        per_class=per_class_of(rows),
        metrics=scores_metrics(matrices, facts.metric, facts.joint) if complete else None,
        metrics_by_score={
            k: scores_metrics(matrices, k, facts.joint) for k in matrices if k != facts.metric
        }
        if complete
        else {},
        timing=timing_of(fits),
        memory=Memory(**memory),
        params=Params(after_task=list(history.params)),
        strategy_stats=list(history.strategy_stats),
        curves=curves_of(fits),
        early_stopping=[
            EarlyStop(
                task=f["task"], best_val_loss=f["best_val_loss"], stopped_at=f["stopped_early_at"]
            )
            for f in fits
            if f.get("best_val_loss") is not None
        ],
        curriculum=[{"task": f["task"], **f["curriculum"]} for f in fits if f.get("curriculum")]
        or None,
        suites=suites_of(history.suites),
        guard=[GuardTask.from_dict(f["guard"]) for f in fits if "guard" in f]
        if any("guard" in f for f in fits)
        else None,
        warnings=list(facts.warnings),
        seed=facts.cfg.seed,
        train=train_summary(facts.cfg.train),
        versions=versions(),
        git_sha=git_sha(),
        device=facts.device,
        num_processes=facts.num_processes,
        config=config.to_dict() if config is not None else None,
        started=history.started,
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds") if complete else None,
        status=status,
    )


def score_matrices(rows: list[list[dict[str, Any]]]) -> dict[str, list[list[float]]]:
    """``{score: R}`` for every score the evaluations hold."""
    score_keys = [k for k in rows[0][0] if k in HIGHER_IS_BETTER] if rows else []
    return {k: matrix_of(rows, k) for k in score_keys}


def suites_of(rows: list[dict[str, dict[str, float]]]) -> dict[str, list[dict[str, float]]] | None:
    """``{suite: [per row {score: value}]}`` from the history's per-row suite scores."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    if not names:
        return None
    return {name: [row.get(name, {}) for row in rows] for name in names}


def per_class_of(rows: list[list[dict[str, Any]]]) -> PerClass | None:
    if not rows or "class_counts" not in rows[0][0]:
        return None
    return PerClass(
        counts=[[cell["class_counts"] for cell in row] for row in rows],
        correct=[[cell["class_correct"] for cell in row] for row in rows],
    )


def curves_of(fits: list[dict[str, Any]]) -> Curves:
    """Training loss and learning rate per task; the evaluations every N steps, if any."""
    return Curves(
        loss=[f["losses"] for f in fits],
        lr_factor=[f.get("lrs", []) for f in fits],
        eval=[f.get("evals", []) for f in fits] if any("evals" in f for f in fits) else None,
    )


def train_summary(train: TrainConfig) -> TrainSummary:
    return TrainSummary(
        optimizer=train.optimizer,
        lr=train.lr,
        batch_size=train.batch_size,
        epochs=train.epochs,
        steps=train.steps,
        schedule=train.schedule,
    )


@dataclass
class RunResult:
    """A finished run: its record (what result.json holds) and the trained model."""

    record: RunRecord
    model: nn.Module | None = None

    @property
    def matrix(self) -> list[list[float]]:
        return self.record.matrix

    @property
    def metrics(self) -> Metrics | None:
        """The summary metrics; ``None`` if the run did not complete."""
        return self.record.metrics

    @property
    def tasks(self) -> list[str]:
        return self.record.tasks

    def __repr__(self) -> str:
        m = self.record.metrics
        if m is None:
            return "RunResult(incomplete)"
        return (
            f"RunResult(strategy={self.record.strategy!r}, tasks={len(self.tasks)}, "
            f"{self.record.score}={m.avg_accuracy:.4f})"
        )
