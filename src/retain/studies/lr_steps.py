"""Study ``lr-steps``: does a higher learning rate, or longer training on the new task, forget
more? The model trained on the first task (with the config's settings) trains on the second task
once per learning rate and step count of a grid, each time from the same weights and with the
same batch order; the first task's loss of score is the forgetting."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retain.binding import check_fields, help_field
from retain.config import RunConfig
from retain.errors import ConfigError
from retain.studies.common import (
    Study,
    check_base,
    drop,
    errorbars,
    figure,
    fit,
    higher_is_better,
    load_stream,
    mean_std,
    metric_name,
    new_model,
    pm,
    quiet,
    register,
    save,
    score,
    strategy_specs,
    substream,
    trend,
)


@dataclass
class Params:
    lrs: list[float] = help_field(
        "learning rates on the second task",
        default_factory=lambda: [0.003, 0.01, 0.03, 0.1],
        gt=0,
    )
    steps: list[int] = help_field(
        "optimizer steps on the second task", default_factory=lambda: [25, 100, 400], ge=1
    )
    strategy: str = help_field("strategy label", default="finetune")

    def __post_init__(self) -> None:
        check_fields(self, "lr-steps")


DEFAULT: dict[str, Any] = {
    "name": "study-lr-steps",
    "stream": {
        "dataset": "mnist",
        "scenario": "permuted",
        "n_tasks": 2,
        "limit_train": 8000,
        "limit_test": 2000,
    },
    "model": {"name": "mlp", "hidden": [100, 100]},
    "train": {"epochs": 4, "batch_size": 128, "optimizer": "sgd", "lr": 0.03},
}


def check(cfg: RunConfig, p: Params) -> None:
    check_base(cfg, "lr-steps")
    if len(p.lrs) < 2 and len(p.steps) < 2:
        raise ConfigError("study 'lr-steps' needs at least two learning rates or two step counts")
    if sorted(p.lrs) != list(p.lrs) or sorted(p.steps) != list(p.steps):
        raise ConfigError("study 'lr-steps': list lrs and steps in increasing order")
    strategy_specs(p.strategy, cfg)


def run(cfg: RunConfig, p: Params, seeds: list[int]) -> dict[str, Any]:
    specs = strategy_specs(p.strategy, cfg)
    # [seed][lr][steps]
    out: dict[str, Any] = {"lrs": p.lrs, "steps": p.steps, "forgetting": [], "new": []}
    for seed in seeds:
        q = quiet(cfg, seed)
        stream = load_stream(cfg, seed)
        if len(stream.tasks) < 2:
            from retain.errors import DataError

            raise DataError(f"study 'lr-steps' needs two tasks; the stream has {len(stream)}")
        t1, t2 = stream.tasks[:2]
        obj, higher = stream.objective, higher_is_better(stream)
        base = fit(new_model(cfg, stream, seed), substream(stream, [t1]), q, specs)
        before = score(base, t1.test, obj)
        f_grid, n_grid = [], []
        for lr in p.lrs:
            f_row, n_row = [], []
            for steps in p.steps:
                c = copy.deepcopy(q)
                c.train.lr, c.train.steps = lr, steps
                model = fit(copy.deepcopy(base), substream(stream, [t2]), c, specs)
                f_row.append(drop(before, score(model, t1.test, obj), higher))
                n_row.append(score(model, t2.test, obj))
            f_grid.append(f_row)
            n_grid.append(n_row)
        out["forgetting"].append(f_grid)
        out["new"].append(n_grid)
        out["metric"] = metric_name(obj)
    return out


def _cells(grid: list[list[list[float]]], i: int | None, j: int | None) -> list[list[float]]:
    """Seed values along the lrs (``j`` fixed) or along the steps (``i`` fixed)."""
    if j is not None:
        return [[g[a][j] for g in grid] for a in range(len(grid[0]))]
    return [[g[i][b] for g in grid] for b in range(len(grid[0][0]))]


def finding(n: dict[str, Any]) -> str:
    parts = []
    if len(n["lrs"]) > 1:
        j = len(n["steps"]) - 1
        clause, _ = trend(n["lrs"], _cells(n["forgetting"], None, j), "forgetting", "learning rate")
        new = _cells(n["new"], None, j)
        clause += (
            f", while the new task's {n.get('metric', 'score')} went from {pm(new[0])} to "
            f"{pm(new[-1])}"
        )
        parts.append(f"at {n['steps'][j]} steps, {clause}")
    if len(n["steps"]) > 1:
        i = len(n["lrs"]) - 1
        clause, _ = trend(n["steps"], _cells(n["forgetting"], i, None), "forgetting", "steps")
        parts.append(f"at learning rate {n['lrs'][i]:g}, {clause}")
    return "Training on the new task: " + "; ".join(parts) + "."


def plot(n: dict[str, Any], folder: Path) -> list[Path]:
    fig = figure(11, 3.8)
    ax, bx, cx = (fig.add_subplot(1, 3, k) for k in (1, 2, 3))
    grid = n["forgetting"]
    means = [
        [mean_std([g[i][j] for g in grid])[0] for j in range(len(n["steps"]))]
        for i in range(len(n["lrs"]))
    ]
    im = ax.imshow(means, cmap="magma_r", aspect="auto")
    ax.set_xticks(range(len(n["steps"])), [str(s) for s in n["steps"]])
    ax.set_yticks(range(len(n["lrs"])), [f"{lr:g}" for lr in n["lrs"]])
    ax.set_xlabel("steps on the new task")
    ax.set_ylabel("learning rate")
    for i, row in enumerate(means):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="grey")
    fig.colorbar(im, ax=ax, label=f"{n['metric']} lost on task 1")
    ax.set_title("forgetting (mean over seeds)")
    for j, s in enumerate(n["steps"]):
        errorbars(bx, n["lrs"], _cells(grid, None, j), label=f"{s} steps")
    bx.set_xscale("log")
    bx.set_xlabel("learning rate")
    bx.set_title("forgetting vs learning rate")
    bx.legend(fontsize=7)
    for i, lr in enumerate(n["lrs"]):
        errorbars(cx, n["steps"], _cells(grid, i, None), label=f"lr {lr:g}")
    cx.set_xscale("log")
    cx.minorticks_off()
    cx.set_xticks(n["steps"], [str(v) for v in n["steps"]])
    cx.set_xlabel("steps on the new task")
    cx.set_title("forgetting vs steps")
    cx.legend(fontsize=7)
    fig.suptitle(f"forgetting vs learning rate and steps ({len(grid)} seed(s), mean ± std)")
    return [save(fig, folder / "lr-steps.png")]


STUDY = register(
    Study(
        name="lr-steps",
        summary="forgetting vs learning rate and number of steps on the new task",
        claim="a higher learning rate and longer training on the new task forget more",
        params=Params,
        default=DEFAULT,
        check=check,
        run=run,
        finding=finding,
        plot=plot,
    )
)
