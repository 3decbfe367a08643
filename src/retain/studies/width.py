"""Study ``width``: do wider networks forget less at equal data? Every hidden width of the
config's model (mlp: ``model.hidden``; cnn: ``model.channels``) is scaled by each factor; each
network trains on the same two tasks with the same settings, and the first task's loss of score
is the forgetting."""

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
    scales: list[float] = help_field(
        "factors applied to every hidden width of the config's model",
        default_factory=lambda: [0.25, 0.5, 1, 2, 4, 8],
        gt=0,
    )
    strategy: str = help_field("strategy label", default="finetune")

    def __post_init__(self) -> None:
        check_fields(self, "width")


DEFAULT: dict[str, Any] = {
    "name": "study-width",
    "stream": {
        "dataset": "mnist",
        "scenario": "permuted",
        "n_tasks": 2,
        "limit_train": 8000,
        "limit_test": 2000,
    },
    "model": {"name": "mlp", "hidden": [100, 100]},
    "train": {"epochs": 3, "batch_size": 128, "optimizer": "adam", "lr": 0.001},
}


def widths(cfg: RunConfig) -> list[int]:
    return list(cfg.model.hidden if cfg.model.name == "mlp" else cfg.model.channels)


def check(cfg: RunConfig, p: Params) -> None:
    if cfg.model.name not in ("mlp", "cnn"):
        raise ConfigError(
            f"study 'width' scales the hidden widths of model mlp (model.hidden) or cnn "
            f"(model.channels); model '{cfg.model.name}' has no width it can vary"
        )
    if not widths(cfg):
        raise ConfigError(
            "study 'width': model.hidden is empty (a linear model has no hidden width); give "
            "hidden layers, e.g. model.hidden=[100,100]"
        )
    check_base(cfg, "width")
    if len(p.scales) < 2 or sorted(p.scales) != list(p.scales):
        raise ConfigError("study 'width' needs at least two scales, in increasing order")
    strategy_specs(p.strategy, cfg)


def run(cfg: RunConfig, p: Params, seeds: list[int]) -> dict[str, Any]:
    specs = strategy_specs(p.strategy, cfg)
    sizes = [[max(1, round(w * s)) for w in widths(cfg)] for s in p.scales]
    out: dict[str, Any] = {
        "scales": p.scales,
        "widths": sizes,
        "forgetting": [],
        "new": [],
        "first": [],
    }
    for seed in seeds:
        stream = load_stream(cfg, seed)
        if len(stream.tasks) < 2:
            from retain.errors import DataError

            raise DataError(f"study 'width' needs two tasks; the stream has {len(stream)}")
        t1, t2 = stream.tasks[:2]
        obj, higher = stream.objective, higher_is_better(stream)
        f_row, n_row, a_row = [], [], []
        for size in sizes:
            c = copy.deepcopy(cfg)
            if c.model.name == "mlp":
                c.model.hidden = size
            else:
                c.model.channels = size
            q = quiet(c, seed)
            model = fit(new_model(c, stream, seed), substream(stream, [t1]), q, specs)
            before = score(model, t1.test, obj)
            model = fit(model, substream(stream, [t2]), q, specs)
            a_row.append(before)
            f_row.append(drop(before, score(model, t1.test, obj), higher))
            n_row.append(score(model, t2.test, obj))
        out["forgetting"].append(f_row)
        out["new"].append(n_row)
        out["first"].append(a_row)
        out["metric"] = metric_name(obj)
    return out


def _cols(rows: list[list[float]]) -> list[list[float]]:
    return [list(c) for c in zip(*rows)]


def finding(n: dict[str, Any]) -> str:
    first = [w[0] for w in n["widths"]]
    clause, _ = trend(first, _cols(n["forgetting"]), "forgetting of task 1", "width")
    if "first" in n:
        learned = _cols(n["first"])
        clause += (
            f"; task 1's {n.get('metric', 'score')} before task 2 was {pm(learned[0])} at width "
            f"{first[0]} and {pm(learned[-1])} at {first[-1]}"
        )
    return f"At equal data, {clause}."


def plot(n: dict[str, Any], folder: Path) -> list[Path]:
    fig = figure(10, 3.8)
    ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    xs = [w[0] for w in n["widths"]]
    errorbars(ax, xs, _cols(n["forgetting"]))
    ax.set_xscale("log", base=2)
    ax.minorticks_off()
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("hidden width (first layer)")
    ax.set_ylabel(f"{n['metric']} lost on task 1")
    ax.set_title("forgetting vs width")
    errorbars(bx, xs, _cols(n["first"]), label="task 1, after task 1")
    errorbars(bx, xs, _cols(n["new"]), label="task 2, after task 2")
    bx.set_xscale("log", base=2)
    bx.minorticks_off()
    bx.set_xticks(xs, [str(x) for x in xs])
    bx.set_xlabel("hidden width (first layer)")
    bx.set_ylabel(n["metric"])
    bx.legend(fontsize=7)
    bx.set_title("what each width learns")
    fig.suptitle(f"width ({len(n['forgetting'])} seed(s), mean ± std)")
    return [save(fig, folder / "width.png")]


STUDY = register(
    Study(
        name="width",
        summary="forgetting vs hidden width at equal data",
        claim="larger models forget less",
        params=Params,
        default=DEFAULT,
        check=check,
        run=run,
        finding=finding,
        plot=plot,
    )
)
