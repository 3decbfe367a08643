"""Study ``iid``: on two i.i.d. halves of one data set, is sequential training (D1, then D2) as
good as combined training (D1 and D2 at once)? Each training runs to convergence: early stopping
on a validation split of its own training data, best weights kept; test data is never used for
a choice."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retain.binding import check_fields, help_field
from retain.config import IIDScenario, RunConfig
from retain.studies.common import (
    Study,
    check_base,
    compare,
    concat,
    drop,
    figure,
    fit,
    higher_is_better,
    load_stream,
    mean_std,
    metric_name,
    new_model,
    noise_words,
    pm,
    quiet,
    register,
    save,
    score,
    strategy_specs,
    substream,
)


@dataclass
class Params:
    validation: float = help_field(
        "validation share of each half when the config has none (early stopping reads it)",
        default=0.1,
        gt=0,
        lt=1,
    )
    patience: int = help_field(
        "early-stopping patience (validations without a better loss) when the config has none",
        default=3,
        ge=1,
    )
    max_epochs: int = help_field("upper bound on epochs per training", default=30, ge=1)
    strategy: str = help_field("the sequential arm's strategy label", default="finetune")

    def __post_init__(self) -> None:
        check_fields(self, "iid")


DEFAULT: dict[str, Any] = {
    "name": "study-iid",
    "stream": {
        "dataset": "mnist",
        "scenario": "iid",
        "n_tasks": 2,
        "validation": 0.1,
        "limit_train": 8000,
        "limit_test": 4000,
    },
    "model": {"name": "mlp", "hidden": [100, 100]},
    "train": {"epochs": 30, "patience": 3, "batch_size": 128, "optimizer": "adam", "lr": 0.001},
}


def study_config(cfg: RunConfig, p: Params) -> RunConfig:
    """The user's config with two halves and training to convergence. A stream of given files
    or column values keeps its first two tasks as D1 and D2; any other is cut into two i.i.d.
    halves of its data."""
    out = copy.deepcopy(cfg)
    s = out.stream
    if s.scenario not in ("iid", "files", "by_column"):
        classes = getattr(s.options, "classes", None)
        out.stream = dataclasses.replace(
            s, scenario="iid", setting="auto", options=IIDScenario(n_tasks=2, classes=classes)
        )
    elif s.scenario == "iid":
        s.options.n_tasks = 2
    out.stream.validation = out.stream.validation or p.validation
    out.train.patience = out.train.patience or p.patience
    out.train.steps = None
    out.train.epochs = max(out.train.epochs, p.max_epochs)
    return out


def check(cfg: RunConfig, p: Params) -> None:
    check_base(cfg, "iid")
    strategy_specs(p.strategy, cfg)


def run(cfg: RunConfig, p: Params, seeds: list[int]) -> dict[str, Any]:
    cfg = study_config(cfg, p)
    specs = strategy_specs(p.strategy, cfg)
    out: dict[str, Any] = {"first": [], "sequential": [], "combined": [], "d1_drop": []}
    for seed in seeds:
        q = quiet(cfg, seed)
        stream = load_stream(cfg, seed)
        if len(stream.tasks) < 2:
            from retain.errors import DataError

            raise DataError(f"study 'iid' needs two tasks (D1, D2); the stream has {len(stream)}")
        t1, t2 = stream.tasks[:2]
        test = concat([t1.test, t2.test])
        obj = stream.objective
        model = fit(new_model(cfg, stream, seed), substream(stream, [t1]), q, specs)
        out["first"].append(score(model, test, obj))
        d1_before = score(model, t1.test, obj)
        # TODO(landscape): keep the first and last weights here (and the joint model's) for the
        # loss-landscape plane of the two halves once retain.landscape exists.
        model = fit(model, substream(stream, [t2]), q, specs)
        out["sequential"].append(score(model, test, obj))
        out["d1_drop"].append(drop(d1_before, score(model, t1.test, obj), higher_is_better(stream)))
        joint = fit(
            new_model(cfg, stream, seed), substream(stream, [t1, t2]), q, [{"name": "joint"}]
        )
        out["combined"].append(score(joint, test, obj))
        out["metric"] = metric_name(obj)
        out["higher_is_better"] = higher_is_better(stream)
    return out


def finding(n: dict[str, Any]) -> str:
    higher = n["higher_is_better"]
    sign = 1 if higher else -1
    v = compare([sign * x for x in n["combined"]], [sign * x for x in n["sequential"]])
    metric = n["metric"]
    head = (
        f"On two i.i.d. halves, combined training scored {pm(n['combined'], 3)} {metric} and "
        f"sequential {pm(n['sequential'], 3)} on both halves' test data"
    )
    gap = abs(v["diff"])
    if v["within_noise"] is False or (v["within_noise"] is None and gap > 0):
        better = "combined" if v["diff"] > 0 else "sequential"
        head += f": {better} is better by {gap:.3f}, {noise_words(v)}"
    else:
        head += f": the difference ({gap:.3f}) is {noise_words(v)}"
    if len(n["combined"]) > 1:  # the arms share each seed's split and initial weights
        ahead = sum(sign * (c - q) > 0 for c, q in zip(n["combined"], n["sequential"]))
        head += f" (combined was ahead in {ahead} of {len(n['combined'])} seeds)"
    forgot, _ = mean_std(n["d1_drop"])
    tail = (
        f"; sequential training lost {pm(n['d1_drop'], 3)} {metric} on D1 while training on D2"
        if forgot > 0
        else f"; training on D2 did not hurt D1 (its {metric} changed by {-forgot:+.3f})"
    )
    return head + tail + "."


def plot(n: dict[str, Any], folder: Path) -> list[Path]:
    fig = figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    arms = [
        ("D1 only", n["first"]),
        ("sequential\nD1 then D2", n["sequential"]),
        ("combined\nD1 + D2", n["combined"]),
    ]
    for i, (_, vals) in enumerate(arms):
        m, s = mean_std(vals)
        ax.bar(i, m, yerr=s, capsize=4, color=["#bbbbbb", "#d95f02", "#1b9e77"][i], alpha=0.8)
        ax.scatter([i] * len(vals), vals, color="black", s=10, zorder=3)
    ax.set_xticks(range(len(arms)), [a for a, _ in arms])
    allv = [x for _, v in arms for x in v]
    lo, hi = min(allv), max(allv)
    pad = max(hi - lo, 1e-3)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_ylabel(f"{n['metric']} on both halves' test data")
    ax.set_title(f"i.i.d. halves: sequential vs combined ({len(n['first'])} seed(s), mean ± std)")
    return [save(fig, folder / "iid.png")]


STUDY = register(
    Study(
        name="iid",
        summary="sequential vs combined training on two i.i.d. halves, each to convergence",
        claim="combined training beats or matches sequential training on i.i.d. data",
        params=Params,
        default=DEFAULT,
        check=check,
        run=run,
        finding=finding,
        plot=plot,
    )
)
