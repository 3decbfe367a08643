"""What every study shares: the registry, training and scoring on part of a stream, the seeds'
statistics and the noise rule its finding sentence uses, and the run directory it writes.

The noise rule. Over several seeds a difference between two means is called *within noise*
when it is smaller than twice the pooled standard deviation of the two groups,
``|mean(a) - mean(b)| < 2 * sqrt((std(a)^2 + std(b)^2) / 2)`` (sample std, ddof 1). With one
seed no spread is measured and the finding says so instead of calling anything significant. The
rule is deliberately simple and conservative: for three seeds it asks for roughly the gap a
two-sample t-test would need at the 5 % level.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from retain.config import RunConfig
from retain.data.stream import Stream, Task, TensorData
from retain.errors import ConfigError, did_you_mean


@dataclass
class Study:
    """A named experiment: its parameters (a dataclass), the base config it runs on when the user
    gives none, and three functions: ``check(cfg, params)`` refuses what it cannot vary (before
    any training), ``run(cfg, params, seeds) -> numbers``, ``finding(numbers) -> str`` (one
    sentence computed from the numbers), ``plot(numbers, folder) -> [paths]``."""

    name: str
    summary: str
    claim: str  # the claim the study puts to the test, in plain words
    params: type
    default: dict[str, Any]
    check: Callable[[RunConfig, Any], None]
    run: Callable[[RunConfig, Any, list[int]], dict[str, Any]]
    finding: Callable[[dict[str, Any]], str]
    plot: Callable[[dict[str, Any], Any], list[Any]]


STUDIES: dict[str, Study] = {}


def register(study: Study) -> Study:
    STUDIES[study.name] = study
    return study


def get_study(name: str) -> Study:
    if name not in STUDIES:
        names = list(STUDIES)
        raise ConfigError(
            f"unknown study '{name}'{did_you_mean(name, names)}; studies: {', '.join(names)}"
        )
    return STUDIES[name]


# --------------------------------------------------------------------------- statistics


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [float(v) for v in values]
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def pm(values: Sequence[float], digits: int = 2) -> str:
    """``0.31 ± 0.02`` over seeds, or ``0.31`` for one value."""
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def compare(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """``mean(a) - mean(b)`` and whether it is within noise (see the module docstring):
    ``within_noise`` is ``None`` with fewer than two seeds on either side."""
    ma, sa = mean_std(a)
    mb, sb = mean_std(b)
    diff = ma - mb
    if min(len(a), len(b)) < 2:
        return {"diff": diff, "threshold": None, "within_noise": None}
    threshold = 2 * math.sqrt((sa**2 + sb**2) / 2)
    return {"diff": diff, "threshold": threshold, "within_noise": abs(diff) < threshold}


def noise_words(verdict: dict[str, Any]) -> str:
    """How a :func:`compare` verdict reads in a finding."""
    if verdict["within_noise"] is None:
        return "one seed, so noise is not measured"
    if verdict["within_noise"]:
        return "within noise"
    return "larger than the seeds' spread"


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); ``None`` when either is constant."""

    def ranks(v: Sequence[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    if len(xs) < 2:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def trend(
    xs: Sequence[float], per_x: Sequence[Sequence[float]], what: str, xname: str, unit: str = ""
) -> tuple[str, dict[str, Any]]:
    """A finding clause for ``what`` (seed values per ``x``) along ``xs``: the direction from the
    first to the last setting, whether that change is within noise, and Spearman's rho of the
    means. Returns the clause and the numbers behind it."""
    means = [mean_std(v)[0] for v in per_x]
    rho = spearman(list(xs), means)
    verdict = compare(per_x[-1], per_x[0])
    lo, hi = f"{xs[0]:g}{unit}", f"{xs[-1]:g}{unit}"
    span = f"{pm(per_x[0])} at {xname} {lo} to {pm(per_x[-1])} at {hi}"
    if verdict["within_noise"]:
        clause = f"{what} shows no clear change with {xname} ({span}, {noise_words(verdict)})"
    else:
        way = "rises" if verdict["diff"] > 0 else "falls"
        if verdict["diff"] == 0:
            way = "stays level"
        clause = f"{what} {way} with {xname} ({span}, {noise_words(verdict)}"
        if rho is not None and len(xs) > 2:
            clause += f"; Spearman rho {rho:+.2f} over {len(xs)} settings"
        clause += ")"
    return clause, {"means": means, "rho": rho, **verdict}


# --------------------------------------------------------------------------- data and training


def quiet(cfg: RunConfig, seed: int) -> RunConfig:
    """A copy of ``cfg`` for one in-memory run: this seed, no checkpoints, no plots."""
    out = copy.deepcopy(cfg)
    out.seed, out.seeds = seed, None
    out.output.checkpoints = False
    out.output.plots = False
    out.output.dir = None
    return out


def check_base(cfg: RunConfig, study: str) -> None:
    """Refuse what no study runs on: language-model text streams (the studies score
    classification and regression outputs)."""
    if cfg.stream.scenario == "text" or cfg.model.name == "hf":
        raise ConfigError(
            f"study '{study}' runs on tables and images with model mlp or cnn; this config "
            f"trains a transformers model (model.name {cfg.model.name}, scenario "
            f"{cfg.stream.scenario}): use a table or image dataset"
        )
    if cfg.stream.setting == "task_il":
        raise ConfigError(
            f"study '{study}' scores every output (class_il or domain_il); set "
            "stream.setting class_il"
        )


def load_stream(cfg: RunConfig, seed: int) -> Stream:
    """The stream ``cfg`` describes, drawn with ``seed``."""
    from retain.data.build import build_stream
    from retain.utils.seed import seed_everything

    seed_everything(seed)
    return build_stream(cfg.stream, seed)[0]


def substream(stream: Stream, tasks: Sequence[Task], **changes: Any) -> Stream:
    """A stream of ``tasks`` with ``stream``'s label space (``changes``: sources, mix, ...)."""
    return Stream(
        tuple(tasks),
        setting=stream.setting,
        objective=stream.objective,
        n_outputs=stream.n_outputs,
        class_names=stream.class_names,
        name=stream.name,
        **changes,
    )


def new_model(cfg: RunConfig, stream: Stream, seed: int) -> nn.Module:
    """A fresh model of ``cfg.model`` for ``stream``, initialised from ``seed``."""
    from retain.models import build_model
    from retain.utils.seed import seed_everything

    seed_everything(seed)
    return build_model(cfg.model, stream)


def strategy_specs(label: str, cfg: RunConfig) -> list[dict[str, Any]]:
    """The specs of a strategy label (``ewc:lam=100+replay``), checked now."""
    from retain import strategies as registry
    from retain.runner import specs_for

    specs = specs_for(label, cfg)
    registry.build_all(specs)
    return specs


def fit(
    model: nn.Module,
    stream: Stream,
    cfg: RunConfig,
    specs: list[dict[str, Any]] | None = None,
    extra: Sequence[Any] = (),
) -> nn.Module:
    """Train ``model`` on every task of ``stream`` in memory with ``cfg``'s training settings and
    the strategies ``specs`` (default finetune), plus ``extra`` strategy instances (probes);
    return the trained model."""
    from retain import strategies as registry
    from retain.api import run

    strategies = [*registry.build_all(specs or [{"name": "finetune"}]), *extra]
    result = run(model, stream, strategies, cfg, warn=lambda _msg: None)
    assert result.model is not None
    return result.model


def higher_is_better(stream: Stream) -> bool:
    return stream.objective == "classification"


@torch.no_grad()
def score(model: nn.Module, data: TensorData, objective: str) -> float:
    """Accuracy over all outputs (classification) or mean squared error (regression)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    total, n = 0.0, 0
    for i in range(0, len(data), 2048):
        x = data.x[i : i + 2048].to(device)
        y = data.y[i : i + 2048].to(device)
        out = model(x)
        if objective == "classification":
            total += float((out.argmax(-1) == y).sum())
        else:
            total += float(((out.reshape(len(y), -1)[:, 0] - y.float()) ** 2).sum())
        n += len(y)
    model.train(was)
    return total / max(n, 1)


def drop(before: float, after: float, higher: bool) -> float:
    """Forgetting: how much worse ``after`` is than ``before`` (positive is worse)."""
    return before - after if higher else after - before


def last_linear(model: nn.Module, n_outputs: int | None) -> nn.Linear | None:
    """The model's output layer: its last ``nn.Linear`` with one row per output."""
    found = None
    for m in model.modules():
        if isinstance(m, nn.Linear) and (n_outputs is None or m.out_features == n_outputs):
            found = m
    return found


@torch.no_grad()
def features(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of ``layer`` (the penultimate representation) for inputs ``x``."""
    got: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, args: got.append(args[0].detach()))
    was = model.training
    model.eval()
    try:
        for i in range(0, len(x), 2048):
            model(x[i : i + 2048].to(next(model.parameters()).device))
    finally:
        handle.remove()
        model.train(was)
    return torch.cat(got).flatten(1).cpu()


def linear_cka(a: torch.Tensor, b: torch.Tensor) -> float:
    """Linear centred kernel alignment of two representations of the same samples (Kornblith
    et al. 2019, https://arxiv.org/abs/1905.00414): 1 for the same geometry, near 0 for
    unrelated ones."""
    a = (a - a.mean(0)).double()
    b = (b - b.mean(0)).double()
    cross = (b.T @ a).norm() ** 2
    denom = (a.T @ a).norm() * (b.T @ b).norm()
    return float(cross / denom) if denom > 0 else 0.0


def params_from(cls: type, values: dict[str, Any], study: str) -> Any:
    """The study's parameters from ``key=value`` pairs (unknown keys name the known ones)."""
    from retain.binding import from_dict

    known = [f.name for f in dataclasses.fields(cls)]

    def unknown(key: str) -> str:
        return (
            f"study '{study}' has no parameter '{key}'{did_you_mean(key, known)}; its "
            f"parameters: {', '.join(known)} (config keys are dotted, e.g. train.lr=0.01)"
        )

    return from_dict(cls, values, study, unknown=unknown)


def metric_name(objective: str) -> str:
    return "accuracy" if objective == "classification" else "MSE"


def concat(parts: Sequence[TensorData]) -> TensorData:
    """One data set of several tasks' data (their inputs and targets only)."""
    return TensorData(x=torch.cat([p.x for p in parts]), y=torch.cat([p.y for p in parts]))


# --------------------------------------------------------------------------- figures


def figure(width: float, height: float) -> Any:
    """A matplotlib figure outside pyplot (see :mod:`retain.report.plots`)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save(fig: Any, path: Any) -> Any:
    import io

    from retain.utils.files import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return write_atomic(path, buf.getvalue())


def errorbars(ax: Any, xs: Sequence[float], per_x: Sequence[Sequence[float]], **kw: Any) -> None:
    """Mean ± std over seeds at each x, with each seed's value as a faint dot."""
    means = [mean_std(v)[0] for v in per_x]
    stds = [mean_std(v)[1] for v in per_x]
    line = ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, **kw)
    color = line[0].get_color()
    for x, vals in zip(xs, per_x):
        ax.scatter([x] * len(vals), vals, s=8, alpha=0.35, color=color)
