"""Study ``prior-shift``: the same classes in shifting proportions (e.g. 80/10/10, then 10/90/0).
Tracks each class's accuracy over the stream and the output layer's bias and weight norm per
class, and asks two things: is the class that vanishes the one forgotten first, and does the
output bias adapt before the features (the layers below)?

"Before" is measured as the step at which each has made half of its total change during the
last task: the vanished class's output bias, and the features' drift (the distance of every
parameter below the output layer from its value at the start of that task). A counterfactual
adds a second measure: the model from before the last task with only its output bias replaced
by the final one; the share of the vanished class's accuracy drop that this bias swap alone
reproduces.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from retain.binding import check_fields, help_field
from retain.config import PriorShiftScenario, RunConfig
from retain.data.stream import TensorData
from retain.errors import ConfigError
from retain.strategies.base import Strategy
from retain.studies.common import (
    Study,
    check_base,
    compare,
    concat,
    figure,
    fit,
    last_linear,
    load_stream,
    mean_std,
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
    proportions: list[list[float]] = help_field(
        "class proportions per task when the config is not a prior_shift stream",
        default_factory=lambda: [[0.8, 0.1, 0.1], [0.1, 0.9, 0.0]],
        ge=0,
    )
    every: int = help_field("record the probes every N optimizer steps", default=1, ge=1)
    probe_size: int = help_field(
        "test samples per class the per-class accuracy is measured on", default=300, ge=1
    )
    strategy: str = help_field("strategy label", default="finetune")

    def __post_init__(self) -> None:
        check_fields(self, "prior-shift")


DEFAULT: dict[str, Any] = {
    "name": "study-prior-shift",
    "stream": {
        "dataset": "mnist",
        "scenario": "prior_shift",
        "classes": [0, 1, 2],
        "proportions": [[0.8, 0.1, 0.1], [0.1, 0.9, 0.0]],
        "samples_per_task": 3000,
    },
    "model": {"name": "mlp", "hidden": [100, 100]},
    "train": {"epochs": 2, "batch_size": 64, "optimizer": "sgd", "lr": 0.05},
}


@dataclass
class Probe(Strategy):
    """Records, every ``every`` steps, the per-class accuracy on a fixed balanced test sample,
    the output layer's bias and weight-row norms, and the features' drift from the task's start
    (a recording hook only: it changes nothing)."""

    every: int = 5
    x: Any = None
    y: Any = None
    n_classes: int = 0
    offset: int = 0  # the index of the stream's first task in the run the probe sees
    rows: list[dict[str, Any]] = field(default_factory=list)

    def before_task(self, model: Any, ctx: Any) -> Any:
        self.task_ = ctx.task_index + self.offset
        self.step_ = 0
        self.start_ = {k: v.detach().clone() for k, v in _below(model).items()}
        self._record(model)
        return model

    def after_step(self, model: Any, ctx: Any) -> None:
        self.step_ += 1
        if self.step_ % self.every == 0:
            self._record(model)

    def after_task(self, model: Any, ctx: Any) -> Any:
        if self.step_ % self.every:
            self._record(model)
        return model

    @torch.no_grad()
    def _record(self, model: Any) -> None:
        head = last_linear(model, self.n_classes)
        was = model.training
        model.eval()
        pred = model(self.x.to(head.weight.device)).argmax(-1).cpu()
        model.train(was)
        acc = [float((pred[self.y == c] == c).float().mean()) for c in range(self.n_classes)]
        drift = sum(float((v - self.start_[k]).pow(2).sum()) for k, v in _below(model).items())
        self.rows.append(
            {
                "task": self.task_,
                "step": self.step_,
                "accuracy": acc,
                "bias": head.bias.detach().cpu().tolist(),
                "norm": head.weight.detach().norm(dim=1).cpu().tolist(),
                "drift": drift**0.5,
            }
        )


def _below(model: Any) -> dict[str, torch.Tensor]:
    """Every parameter below the output layer (the features)."""
    head = last_linear(model, None)
    mine = {id(p) for p in head.parameters()}
    return {k: v for k, v in model.named_parameters() if id(v) not in mine}


def study_config(cfg: RunConfig, p: Params) -> RunConfig:
    out = copy.deepcopy(cfg)
    if out.stream.scenario != "prior_shift":
        k = len(p.proportions[0])
        # The first k of the config's classes (all classes when it names none).
        classes = (getattr(out.stream.options, "classes", None) or list(range(k)))[:k]
        out.stream = dataclasses.replace(
            out.stream,
            scenario="prior_shift",
            setting="auto",
            options=PriorShiftScenario(proportions=p.proportions, classes=classes),
        )
    return out


def check(cfg: RunConfig, p: Params) -> None:
    check_base(cfg, "prior-shift")
    objective = cfg.stream.objective
    if objective == "auto" and cfg.stream.scenario != "prior_shift":
        from retain.data.build import load_source

        objective = load_source(cfg.stream).objective
    if objective == "regression":
        raise ConfigError(
            "study 'prior-shift' shifts class proportions and this data has a numeric target "
            "(regression); give a classification data set"
        )
    props = study_config(cfg, p).stream.options.proportions
    if len(props) < 2:
        raise ConfigError("study 'prior-shift' needs at least two tasks of proportions")
    strategy_specs(p.strategy, cfg)


def _t50(values: list[float]) -> float | None:
    """The fraction of the task at which ``values`` first made half of its total change."""
    total = values[-1] - values[0]
    if total == 0 or len(values) < 2:
        return None
    for i, v in enumerate(values):
        if (v - values[0]) / total >= 0.5:
            return i / (len(values) - 1)
    return 1.0


def run(cfg: RunConfig, p: Params, seeds: list[int]) -> dict[str, Any]:
    cfg = study_config(cfg, p)
    props = cfg.stream.options.proportions
    last, prev = props[-1], props[-2]
    vanished = min(range(len(last)), key=lambda c: (last[c], last[c] - prev[c]))
    specs = strategy_specs(p.strategy, cfg)
    out: dict[str, Any] = {"proportions": props, "vanished": vanished, "seeds": []}
    for seed in seeds:
        stream = load_stream(cfg, seed)
        model = new_model(cfg, stream, seed)
        k = stream.n_outputs or 0
        if last_linear(model, k) is None:
            raise ConfigError(
                "study 'prior-shift' reads the output layer's bias: the model needs a last "
                "nn.Linear with one output per class"
            )
        test = concat([t.test for t in stream.tasks])
        g = torch.Generator().manual_seed(seed)
        keep = torch.cat([torch.nonzero(test.y == c).flatten()[: p.probe_size] for c in range(k)])
        keep = keep[torch.randperm(len(keep), generator=g)]
        probe = Probe(every=p.every, x=test.x[keep], y=test.y[keep], n_classes=k)
        model = fit(model, substream(stream, stream.tasks[:-1]), quiet(cfg, seed), specs, [probe])
        before = copy.deepcopy(model)
        probe.offset = len(stream.tasks) - 1
        model = fit(model, substream(stream, stream.tasks[-1:]), quiet(cfg, seed), specs, [probe])
        # Counterfactual: the model before the last task with only the final output bias.
        swapped = copy.deepcopy(before)
        last_linear(swapped, k).bias.data.copy_(last_linear(model, k).bias.data)
        sets = _class_sets(probe.x, probe.y, k)
        acc = {
            name: _accuracy(m, sets)
            for name, m in (("before", before), ("after", model), ("swapped", swapped))
        }
        drops = [acc["before"][c] - acc["after"][c] for c in range(k)]
        bias_drop = acc["before"][vanished] - acc["swapped"][vanished]
        rows = probe.rows
        last_rows = [r for r in rows if r["task"] == len(stream.tasks) - 1]
        bias_t50 = _t50([r["bias"][vanished] for r in last_rows])
        drift_t50 = _t50([r["drift"] for r in last_rows])
        acc_series = [r["accuracy"][vanished] for r in last_rows]
        half = next(
            (
                i / max(len(acc_series) - 1, 1)
                for i, a in enumerate(acc_series)
                if a <= acc_series[0] / 2
            ),
            None,
        )
        out["seeds"].append(
            {
                "seed": seed,
                "drop": drops,
                "before": acc["before"],
                "bias_only_share": bias_drop / drops[vanished] if drops[vanished] > 0 else None,
                "bias_t50": bias_t50,
                "features_t50": drift_t50,
                "vanished_half_at": half,
                "trace": rows,
            }
        )
    return out


def _class_sets(x: torch.Tensor, y: torch.Tensor, k: int) -> list[TensorData]:
    return [TensorData(x=x[y == c], y=y[y == c]) for c in range(k)]


def _accuracy(model: Any, sets: list[TensorData]) -> list[float]:
    return [score(model, d, "classification") if len(d) else 0.0 for d in sets]


def finding(n: dict[str, Any]) -> str:
    c = n["vanished"]
    seeds = n["seeds"]
    k = len(seeds[0]["drop"])
    drops = [[s["drop"][j] for s in seeds] for j in range(k)]
    means = [mean_std(d)[0] for d in drops]
    worst = max(range(k), key=lambda j: means[j])
    others = [j for j in range(k) if j != c]
    runner_up = max(others, key=lambda j: means[j])
    v = compare(drops[c], drops[runner_up])
    learned = mean_std([s["before"][c] for s in seeds])[0]
    if learned < 0.5:
        first = (
            f"the vanished class {c} had only {learned:.2f} accuracy before the last task, so "
            "there was little of it to forget"
        )
    elif worst == c and v["within_noise"] is not True:
        first = (
            f"the vanished class {c} lost the most accuracy in the last task "
            f"({pm(drops[c])} against at most {pm(drops[runner_up])} for the others, "
            f"{noise_words(v)})"
        )
    elif worst == c:
        first = (
            f"the vanished class {c} lost {pm(drops[c])} accuracy, class {runner_up} "
            f"{pm(drops[runner_up])}: {noise_words(v)}, so it is not clearly forgotten first"
        )
    else:
        first = (
            f"the vanished class {c} was not the most forgotten: it lost {pm(drops[c])} "
            f"accuracy, class {worst} {pm(drops[worst])}"
        )
    halves = [s["vanished_half_at"] for s in seeds if s.get("vanished_half_at") is not None]
    if learned >= 0.5 and len(halves) == len(seeds):
        first += f"; its accuracy halved {pm([100 * h for h in halves], 0)} % into the task"
    pairs = [
        (s["bias_t50"], s["features_t50"])
        for s in seeds
        if s["bias_t50"] is not None and s["features_t50"] is not None
    ]
    if pairs:
        vb = compare([b for b, _ in pairs], [f for _, f in pairs])
        b, f = pm([x for x, _ in pairs]), pm([y for _, y in pairs])
        when = f"each made half its change at {b} (bias) vs {f} (features) of the task"
        if vb["within_noise"] is not True and vb["diff"] < 0:
            second = f"its output bias moved before the features ({when}, {noise_words(vb)})"
        elif vb["within_noise"] is not True and vb["diff"] > 0:
            second = f"its output bias did not move before the features ({when})"
        else:
            second = f"bias and features moved at the same pace ({when}, {noise_words(vb)})"
    else:
        second = "its output bias did not change, so its timing is not measured"
    shares = [s["bias_only_share"] for s in seeds if s["bias_only_share"] is not None]
    if shares:
        second += (
            f"; swapping in the final output bias alone reproduces {pm([100 * x for x in shares], 0)}"
            f" % of its accuracy drop"
        )
    return f"Under a prior shift, {first}; {second}."


def plot(n: dict[str, Any], folder: Path) -> list[Path]:
    trace = n["seeds"][0]["trace"]
    k = len(trace[0]["accuracy"])
    fig = figure(12, 3.6)
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    every = max(1, trace[1]["step"] - trace[0]["step"]) if len(trace) > 1 else 1
    xs = [every * i for i in range(len(trace))]
    boundary = next((i for i, r in enumerate(trace) if r["task"] > 0), None)
    for key, ax, label in (
        ("accuracy", axes[0], "accuracy per class"),
        ("bias", axes[1], "output bias per class"),
        ("norm", axes[2], "output weight norm per class"),
    ):
        for c in range(k):
            style = "-" if c != n["vanished"] else "--"
            ax.plot(
                xs,
                [r[key][c] for r in trace],
                style,
                label=f"class {c}" + (" (vanishes)" if c == n["vanished"] else ""),
            )
        if boundary is not None:
            ax.axvline(every * boundary, color="grey", lw=0.8)
        ax.set_title(label)
        ax.set_xlabel("optimizer step over the stream")
    axes[0].legend(fontsize=7)
    drift = axes[1].twinx()
    drift.plot(xs, [r["drift"] for r in trace], color="black", lw=0.8, alpha=0.5)
    drift.set_ylabel("feature drift from task start (black)")
    fig.suptitle(f"prior shift {n['proportions']} (seed {n['seeds'][0]['seed']})")
    return [save(fig, folder / "prior-shift.png")]


STUDY = register(
    Study(
        name="prior-shift",
        summary="per-class accuracy, output bias and weight norm over a shift in class proportions",
        claim="the class that vanishes is forgotten first, and the output bias adapts before the "
        "features",
        params=Params,
        default=DEFAULT,
        check=check,
        run=run,
        finding=finding,
        plot=plot,
    )
)
