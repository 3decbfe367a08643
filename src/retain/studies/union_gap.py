"""Study ``union-gap``: how far is each way of training on the new data alone from training on
the union of all the data? Each strategy trains on the config's stream task by task, and
``joint`` trains a fresh network on all the tasks at once, from the same initial weights.
Distances to joint: the gap in the average score over all tasks, how often the two models'
predictions disagree on the test data (classification; regression: the RMS difference of
their outputs), and the distance of the weights relative to how far joint moved from the
initial weights."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from retain.binding import check_fields, help_field
from retain.config import RunConfig
from retain.errors import ConfigError
from retain.studies.common import (
    Study,
    check_base,
    compare,
    concat,
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
)


@dataclass
class Params:
    strategies: list[str] = help_field(
        "strategy labels compared with joint training",
        default_factory=lambda: ["finetune", "ewc:lam=100", "replay"],
    )

    def __post_init__(self) -> None:
        check_fields(self, "union-gap")


DEFAULT: dict[str, Any] = {
    "name": "study-union-gap",
    "stream": {
        "dataset": "mnist",
        "scenario": "permuted",
        "n_tasks": 2,
        "limit_train": 8000,
        "limit_test": 2000,
    },
    "model": {"name": "mlp", "hidden": [100, 100]},
    "train": {"epochs": 2, "batch_size": 128, "optimizer": "adam", "lr": 0.001},
}


def check(cfg: RunConfig, p: Params) -> None:
    check_base(cfg, "union-gap")
    if not p.strategies or "joint" in p.strategies:
        raise ConfigError(
            "study 'union-gap' compares strategies with joint (always run): give at least one "
            "other, e.g. strategies=[finetune,ewc,replay]"
        )
    if len(set(p.strategies)) != len(p.strategies):
        raise ConfigError(f"study 'union-gap': strategies lists a label twice: {p.strategies}")
    for label in p.strategies:
        strategy_specs(label, cfg)


@torch.no_grad()
def _outputs(model: Any, x: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = torch.cat([model(x[i : i + 2048].to(dev)).cpu() for i in range(0, len(x), 2048)])
    model.train(was)
    return out


def _average(model: Any, stream: Any) -> float:
    """The average score over the stream's tasks' test data."""
    return sum(score(model, t.test, stream.objective) for t in stream.tasks) / len(stream.tasks)


def _flat(model: Any) -> torch.Tensor:
    return torch.cat([p.detach().flatten().cpu() for p in model.parameters()])


def run(cfg: RunConfig, p: Params, seeds: list[int]) -> dict[str, Any]:
    labels = list(p.strategies)
    out: dict[str, Any] = {
        "strategies": labels,
        "joint": [],
        "score": {},
        "gap": {},
        "disagreement": {},
        "weight_distance": {},
    }
    for key in ("score", "gap", "disagreement", "weight_distance"):
        out[key] = {label: [] for label in labels}
    for seed in seeds:
        q = quiet(cfg, seed)
        stream = load_stream(cfg, seed)
        obj, higher = stream.objective, higher_is_better(stream)
        sign = 1 if higher else -1
        avg = functools.partial(_average, stream=stream)

        start = new_model(cfg, stream, seed)
        theta0 = _flat(start)
        joint = fit(copy.deepcopy(start), stream, q, [{"name": "joint"}])
        test = concat([t.test for t in stream.tasks]).x
        j_out, j_avg, theta_j = _outputs(joint, test), avg(joint), _flat(joint)
        out["joint"].append(j_avg)
        for label in labels:
            model = fit(copy.deepcopy(start), stream, q, strategy_specs(label, cfg))
            s_avg, s_out = avg(model), _outputs(model, test)
            out["score"][label].append(s_avg)
            out["gap"][label].append(sign * (j_avg - s_avg))
            if obj == "classification":
                dis = float((s_out.argmax(-1) != j_out.argmax(-1)).float().mean())
            else:
                dis = float((s_out - j_out).pow(2).mean().sqrt())
            out["disagreement"][label].append(dis)
            moved = float((theta_j - theta0).norm())
            out["weight_distance"][label].append(float((_flat(model) - theta_j).norm()) / moved)
        out["metric"] = metric_name(obj)
        out["classification"] = obj == "classification"
    return out


def finding(n: dict[str, Any]) -> str:
    labels = n["strategies"]
    gap = n["gap"]
    order = sorted(labels, key=lambda s: mean_std(gap[s])[0])
    ranked = ", ".join(f"{s} {pm(gap[s], 3)}" for s in order)
    text = f"Gap to joint training in average {n['metric']} (joint {pm(n['joint'], 3)}): {ranked}"
    best = order[0]
    # A gap "matches" joint when it is within noise of zero, judged by its own spread.
    m, s = mean_std(gap[best])
    if len(gap[best]) < 2:
        text += f"; closest: {best} ({noise_words({'within_noise': None})})"
    elif abs(m) < 2 * s:
        text += f"; {best} matches joint within noise"
    else:
        text += f"; none matches joint: the closest, {best}, is {m:.3f} from it, beyond its spread"
    if len(order) > 1:
        v = compare(gap[order[1]], gap[best])
        text += f"; {best} vs {order[1]}: {v['diff']:.3f} apart, {noise_words(v)}"
    what = "predictions differ from joint's on" if n.get("classification") else "outputs differ by"
    dis = "; ".join(
        f"{s} {pm([100 * x for x in n['disagreement'][s]], 1)} %"
        if n.get("classification")
        else f"{s} {pm(n['disagreement'][s], 3)}"
        for s in order
    )
    return f"{text}. Their {what} the test data: {dis}."


def plot(n: dict[str, Any], folder: Path) -> list[Path]:
    fig = figure(11, 3.8)
    axes = [fig.add_subplot(1, 3, k) for k in (1, 2, 3)]
    labels = n["strategies"]
    for ax, key, title in (
        (axes[0], "gap", f"gap to joint ({n['metric']})"),
        (axes[1], "disagreement", "disagreement with joint"),
        (axes[2], "weight_distance", "weight distance / joint's travel"),
    ):
        for i, s in enumerate(labels):
            vals = n[key][s]
            m, sd = mean_std(vals)
            ax.bar(i, m, yerr=sd, capsize=4, alpha=0.8)
            ax.scatter([i] * len(vals), vals, color="black", s=10, zorder=3)
        ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(title)
    fig.suptitle(f"distance to joint training ({len(n['joint'])} seed(s), mean ± std)")
    return [save(fig, folder / "union-gap.png")]


STUDY = register(
    Study(
        name="union-gap",
        summary="EWC, replay, finetune: distance to joint training on the union of the data",
        claim="EWC approximates a Bayesian update, as if trained on the union of the data",
        params=Params,
        default=DEFAULT,
        check=check,
        run=run,
        finding=finding,
        plot=plot,
    )
)
