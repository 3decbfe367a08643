"""The run record: what ``result.json`` holds, built from the evaluation rows.

``result.json`` is the source of truth; every report is a rendering of it. Schema (version 1) of a
run record (``kind: run``)::

    schema_version, kind, name, strategy ("ewc+replay"), strategies [specs], joint (bool)
    stream {name, setting, objective, n_outputs, class_names}, tasks [names], task_classes
    score (the metric of matrix), higher_is_better
    matrix          R: row 0 the untrained model, row i after task i, column j task j
                    (a joint run has two rows: before and after its single training)
    matrices        {metric: R} for every score computed (accuracy, task_il_accuracy, loss, ...)
    per_class       {correct, counts}: [row][task][class] (classification)
    metrics         avg_accuracy, bwt, fwt, forgetting, plasticity, *_per_task, gap_to_joint
    metrics_by_score {metric: the same metrics on that matrix}
    timing          per task: steps, samples, train_seconds (the loop), hook_seconds (strategies'
                    before/after-task work, e.g. a Fisher pass), eval_seconds, samples_per_s; totals
    memory, params, strategy_stats (per task: each strategy's stats()), curves (training loss
    and learning-rate factor per task, every 25 steps), warnings
    seed, versions, git_sha, device, num_processes, config, started, finished, status

A comparison (``kind: compare``) holds ``runs: {strategy label: run record}`` and ``summary``.
"""

from __future__ import annotations

import contextlib
import platform
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retain.eval import metrics as M
from retain.objectives import HIGHER_IS_BETTER

if TYPE_CHECKING:
    from torch import nn

    from retain.config import RunConfig, TrainConfig
    from retain.data.stream import Stream
    from retain.strategies.base import Strategy

SCHEMA_VERSION = 1


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("retain", "torch", "accelerate", "numpy", "safetensors", "transformers", "peft"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def git_sha() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=2, check=False)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def matrix_of(rows: list[list[dict[str, Any]]], key: str) -> list[list[float]]:
    return [[float(cell[key]) for cell in row] for row in rows]


def scores_metrics(R: list[list[float]], higher: bool, joint: bool) -> dict[str, Any]:
    if joint:
        return M.joint_summary(R[-1])
    return M.summary(R, higher)


def build_record(
    *,
    stream: Stream,
    strategies: list[Strategy],
    rows: list[list[dict[str, Any]]],
    fits: list[dict[str, Any]],
    params: list[int],
    metric: str,
    split: str = "test",
    strategy_stats: list[dict[str, Any]] | None = None,
    joint: bool,
    seed: int,
    config: RunConfig | None,
    train: TrainConfig,
    warnings: list[str],
    started: str,
    status: str,
    memory: dict[str, float],
    device: str,
    num_processes: int,
) -> dict[str, Any]:
    from retain.strategies import label

    score_keys = [k for k in rows[0][0] if k in HIGHER_IS_BETTER] if rows else []
    matrices = {k: matrix_of(rows, k) for k in score_keys}
    higher = HIGHER_IS_BETTER[metric]
    complete = len(rows) == (2 if joint else len(stream.tasks) + 1)
    rec: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "run",
        "name": (config.name if config and config.name else stream.name),
        "strategy": label(strategies),
        "strategies": [s.spec() for s in strategies],
        "joint": joint,
        "stream": {
            "name": stream.name, "setting": stream.setting, "objective": stream.objective,
            "n_outputs": stream.n_outputs,
            "class_names": list(stream.class_names) if stream.class_names else None,
        },
        "tasks": stream.task_names,
        "task_classes": [list(t.classes) if t.classes is not None else None for t in stream.tasks],
        "score": metric,
        "split": split,
        "higher_is_better": higher,
        "matrix": matrices.get(metric, []),
        "matrices": matrices,
    }
    if rows and "class_counts" in rows[0][0]:
        rec["per_class"] = {
            "counts": [[cell["class_counts"] for cell in row] for row in rows],
            "correct": [[cell["class_correct"] for cell in row] for row in rows],
        }
    if complete:
        rec["metrics"] = scores_metrics(matrices[metric], higher, joint)
        rec["metrics_by_score"] = {
            k: scores_metrics(m, HIGHER_IS_BETTER[k], joint) for k, m in matrices.items() if k != metric
        }
    else:
        rec["metrics"] = {}
        rec["metrics_by_score"] = {}
    train_s = [f["train_seconds"] for f in fits]
    rec["timing"] = {
        "per_task": [{**{k: f[k] for k in ("task", "steps", "samples", "train_seconds",
                                            "eval_seconds", "samples_per_s")},
                      "hook_seconds": f.get("hook_seconds", 0.0)}  # older checkpoints lack it
                     for f in fits],
        "train_seconds": sum(train_s),
        # Work strategies do between tasks (Fisher passes, buffer selection, generator training).
        "hook_seconds": sum(f.get("hook_seconds", 0.0) for f in fits),
        "eval_seconds": sum(f["eval_seconds"] for f in fits),
        "samples_per_s": (sum(f["samples"] for f in fits) / sum(train_s)) if sum(train_s) > 0 else 0.0,
    }
    rec["memory"] = memory
    rec["params"] = {"after_task": params}
    rec["strategy_stats"] = list(strategy_stats or [])
    rec["curves"] = {"loss": [f["losses"] for f in fits],
                     "lr_factor": [f.get("lrs", []) for f in fits]}
    rec["early_stopping"] = [
        {"task": f["task"], "best_val_loss": f["best_val_loss"], "stopped_at": f["stopped_early_at"]}
        for f in fits if f.get("best_val_loss") is not None
    ]
    rec["warnings"] = list(warnings)
    rec["seed"] = seed
    rec["train"] = {"optimizer": train.optimizer, "lr": train.lr, "batch_size": train.batch_size,
                    "epochs": train.epochs, "steps": train.steps, "schedule": train.schedule}
    rec["versions"] = versions()
    rec["git_sha"] = git_sha()
    rec["device"] = device
    rec["num_processes"] = num_processes
    rec["config"] = config.to_dict() if config is not None else None
    rec["started"] = started
    rec["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds") if complete else None
    rec["status"] = status
    return rec


@dataclass
class RunResult:
    """A finished run: its record (what result.json holds) and the trained model."""

    record: dict[str, Any]
    model: nn.Module | None = None

    @property
    def matrix(self) -> list[list[float]]:
        return self.record["matrix"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record["metrics"]

    @property
    def tasks(self) -> list[str]:
        return self.record["tasks"]

    def __getitem__(self, key: str) -> Any:
        return self.record[key]

    def __repr__(self) -> str:
        m = self.record.get("metrics", {})
        avg = m.get("avg_accuracy")
        return (f"RunResult(strategy={self.record['strategy']!r}, tasks={len(self.tasks)}, "
                f"{self.record['score']}={avg:.4f})" if avg is not None else "RunResult(incomplete)")
