"""Study ``mixing``: how much old data must the new task's batches hold to keep the old task?
The model trained on the first task trains on the second with a share of each batch drawn from
the first task's training data (retain's data mixing, :mod:`retain.data.mixing`: the same number
of steps, the old samples replacing part of each batch), once per share, from the same weights.
Measured: the first task's loss of score (forgetting) and the second task's gain."""

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
    compare,
    drop,
    errorbars,
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

OLD = "old data"  # the pool name of the first task's training data


@dataclass
class Params:
    shares: list[float] = help_field(
        "shares of old data in each batch of the new task",
        default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.3, 0.5],
        ge=0,
        lt=1,
    )
    keep: float = help_field(
        "the finding names the smallest share that avoids at least this fraction of the "
        "forgetting seen with no old data",
        default=0.8,
        gt=0,
        le=1,
    )
    strategy: str = help_field("strategy label", default="finetune")

    def __post_init__(self) -> None:
        check_fields(self, "mixing")


DEFAULT: dict[str, Any] = {
    "name": "study-mixing",
    "stream": {
        "dataset": "mnist",
        "scenario": "split",
        "n_tasks": 2,
        "limit_train": 8000,
        "limit_test": 2000,
    },
    "model": {"name": "mlp", "hidden": [100, 100]},
    "train": {"epochs": 4, "batch_size": 128, "optimizer": "adam", "lr": 0.001},
}


def check(cfg: RunConfig, p: Params) -> None:
    check_base(cfg, "mixing")
    if len(p.shares) < 2 or sorted(p.shares) != list(p.shares) or p.shares[0] != 0:
        raise ConfigError(
            "study 'mixing' needs shares in increasing order starting at 0 (no old data, the "
            "reference), e.g. shares=[0,0.1,0.3]"
        )
    strategy_specs(p.strategy, cfg)


def run(cfg: RunConfig, p: Params, seeds: list[int]) -> dict[str, Any]:
    specs = strategy_specs(p.strategy, cfg)
    out: dict[str, Any] = {
        "shares": p.shares,
        "keep": p.keep,
        "forgetting": [],
        "new": [],
        "gain": [],
    }
    for seed in seeds:
        q = quiet(cfg, seed)
        stream = load_stream(cfg, seed)
        if len(stream.tasks) < 2:
            from retain.errors import DataError

            raise DataError(f"study 'mixing' needs two tasks; the stream has {len(stream)}")
        t1, t2 = stream.tasks[:2]
        obj, higher = stream.objective, higher_is_better(stream)
        base = fit(new_model(cfg, stream, seed), substream(stream, [t1]), q, specs)
        before, new_before = score(base, t1.test, obj), score(base, t2.test, obj)
        f_row, n_row, g_row = [], [], []
        for share in p.shares:
            extra: dict[str, Any] = {}
            if share > 0:
                extra = {
                    "sources": {OLD: t1.train},
                    "mix": {t2.name: {t2.name: 1 - share, OLD: share}},
                }
            model = fit(copy.deepcopy(base), substream(stream, [t2], **extra), q, specs)
            new = score(model, t2.test, obj)
            f_row.append(drop(before, score(model, t1.test, obj), higher))
            n_row.append(new)
            g_row.append(-drop(new_before, new, higher))
        out["forgetting"].append(f_row)
        out["new"].append(n_row)
        out["gain"].append(g_row)
        out["metric"] = metric_name(obj)
    return out


def _cols(rows: list[list[float]]) -> list[list[float]]:
    return [list(c) for c in zip(*rows)]


def avoided(n: dict[str, Any]) -> list[list[float]]:
    """Per share and seed: the fraction of the no-old-data forgetting avoided."""
    out = []
    for row in n["forgetting"]:
        f0 = row[0]
        out.append([(1 - f / f0) if f0 > 0 else 0.0 for f in row])
    return _cols(out)


def finding(n: dict[str, Any]) -> str:
    shares = n["shares"]
    forg, new = _cols(n["forgetting"]), _cols(n["new"])
    m = n["metric"]
    f0 = mean_std(forg[0])[0]
    if f0 <= 0:
        return (
            f"With no old data the first task lost nothing ({pm(forg[0])} {m}), so mixing had "
            "nothing to keep."
        )
    saved = avoided(n)
    means = [mean_std(s)[0] for s in saved]
    first = next((i for i in range(1, len(shares)) if means[i] >= n["keep"]), None)
    head = f"With no old data the first task lost {pm(forg[0])} {m}"
    if first is None:
        best = max(range(1, len(shares)), key=lambda i: means[i])
        body = (
            f"; no share up to {shares[-1]:.0%} avoided {n['keep']:.0%} of that; the best, "
            f"{shares[best]:.0%}, lost {pm(forg[best])} ({means[best]:.0%} avoided)"
        )
        i = best
    else:
        v = compare(forg[first], forg[0])
        body = (
            f"; {shares[first]:.0%} old data is the smallest share that avoids at least "
            f"{n['keep']:.0%} of it: it lost {pm(forg[first])} ({means[first]:.0%} avoided, "
            f"less than with no old data by a margin {noise_words(v)})"
        )
        i = first
    vn = compare(new[i], new[0])
    cost = f"; the new task's {m} went from {pm(new[0])} to {pm(new[i])}, {noise_words(vn)}"
    return head + body + cost + "."


def plot(n: dict[str, Any], folder: Path) -> list[Path]:
    fig = figure(10, 3.8)
    ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    xs = [100 * s for s in n["shares"]]
    errorbars(ax, xs, _cols(n["forgetting"]), label="task 1 lost")
    ax.set_xlabel("old data in each batch of task 2 (%)")
    ax.set_ylabel(f"{n['metric']} lost on task 1")
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_title("forgetting vs share of old data")
    errorbars(bx, xs, _cols(n["new"]), label="task 2 after training")
    bx.set_xlabel("old data in each batch of task 2 (%)")
    bx.set_ylabel(n["metric"])
    bx.legend(fontsize=7)
    bx.set_title("what the new task gets")
    fig.suptitle(f"data mixing ({len(n['forgetting'])} seed(s), mean ± std)")
    return [save(fig, folder / "mixing.png")]


STUDY = register(
    Study(
        name="mixing",
        summary="forgetting and new-task gain vs the share of old data in the batches (0-50%)",
        claim="20-30% old data in the mix keeps most of the old task",
        params=Params,
        default=DEFAULT,
        check=check,
        run=run,
        finding=finding,
        plot=plot,
    )
)
