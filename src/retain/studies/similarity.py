"""Study ``similarity``: do more dissimilar tasks forget more? D1 is the first task of the user's
stream; each D2 is the same data under a transformation of measured size: a rotation by an angle
(images) or a permutation of a fraction of the input features (any inputs). The model trained on
D1 trains on each D2 in turn (from the same weights), and D1's loss of score is the forgetting.

Besides the angle or fraction, a distance measured by the model itself: one minus the linear CKA
between the D1 model's penultimate representations of D1's test inputs and of the same inputs
transformed (0: the model sees the same thing; near 1: unrelated).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from retain.binding import check_fields, help_field
from retain.config import RunConfig
from retain.data.stream import Task, TensorData
from retain.errors import ConfigError
from retain.studies.common import (
    Study,
    check_base,
    drop,
    errorbars,
    features,
    figure,
    fit,
    higher_is_better,
    last_linear,
    linear_cka,
    load_stream,
    mean_std,
    metric_name,
    new_model,
    quiet,
    register,
    save,
    score,
    spearman,
    strategy_specs,
    substream,
    trend,
)


@dataclass
class Params:
    kind: Literal["rotation", "permutation"] = help_field(
        "rotation (images: D2 is D1 rotated) or permutation (D2 is D1 with a fraction of its "
        "input features permuted)",
        default="rotation",
    )
    angles: list[float] = help_field(
        "rotation: D2's angles in degrees", default_factory=lambda: [0, 30, 60, 90, 135, 180]
    )
    fractions: list[float] = help_field(
        "permutation: the fractions of features permuted",
        default_factory=lambda: [0.0, 0.1, 0.25, 0.5, 1.0],
        ge=0,
        le=1,
    )
    strategy: str = help_field("strategy label", default="finetune")

    def __post_init__(self) -> None:
        check_fields(self, "similarity")


DEFAULT: dict[str, Any] = {
    "name": "study-similarity",
    "stream": {
        "dataset": "mnist",
        "scenario": "iid",
        "n_tasks": 1,
        "limit_train": 8000,
        "limit_test": 2000,
    },
    "model": {"name": "mlp", "hidden": [100, 100]},
    "train": {"epochs": 3, "batch_size": 128, "optimizer": "adam", "lr": 0.001},
}


def _levels(p: Params) -> list[float]:
    return list(p.angles if p.kind == "rotation" else p.fractions)


def check(cfg: RunConfig, p: Params) -> None:
    check_base(cfg, "similarity")
    if len(_levels(p)) < 2:
        raise ConfigError(f"study 'similarity' needs at least two {p.kind} levels to compare")
    strategy_specs(p.strategy, cfg)


def transform(kind: str, level: float, seed: int) -> Any:
    """The map from D1's inputs to D2's: a rotation by ``level`` degrees, or a random
    permutation of a ``level`` fraction of the features (the same one for every sample)."""
    if kind == "rotation":
        from retain.data.scenarios import rotate_images

        return lambda x: rotate_images(x, level) if level else x

    def permute(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), -1)
        d = flat.shape[1]
        g = torch.Generator().manual_seed(seed * 1000 + int(level * 997))
        chosen = torch.randperm(d, generator=g)[: int(round(level * d))]
        idx = torch.arange(d)
        idx[chosen] = chosen[torch.randperm(len(chosen), generator=g)]
        return flat[:, idx].reshape(x.shape)

    return permute


def _moved(task: Task, fn: Any, name: str) -> Task:
    def on(d: TensorData | None) -> TensorData | None:
        return None if d is None else TensorData(x=fn(d.x), y=d.y)

    return dataclasses.replace(
        task, name=name, train=on(task.train), test=on(task.test), val=on(task.val)
    )


def run(cfg: RunConfig, p: Params, seeds: list[int]) -> dict[str, Any]:
    specs = strategy_specs(p.strategy, cfg)
    levels = _levels(p)
    out: dict[str, Any] = {
        "kind": p.kind,
        "levels": levels,
        "forgetting": [],
        "new": [],
        "repr_distance": [],
    }
    for seed in seeds:
        q = quiet(cfg, seed)
        stream = load_stream(cfg, seed)
        d1 = stream.tasks[0]
        if p.kind == "rotation" and d1.train.x.dim() != 4:
            raise ConfigError(
                "study 'similarity' with kind rotation needs images [N, C, H, W]; these inputs "
                f"have shape {tuple(d1.train.x.shape[1:])}: use kind=permutation"
            )
        obj, higher = stream.objective, higher_is_better(stream)
        base = fit(new_model(cfg, stream, seed), substream(stream, [d1]), q, specs)
        before = score(base, d1.test, obj)
        head = last_linear(base, stream.n_outputs)
        ref = features(base, head, d1.test.x) if head is not None else None
        f_row, n_row, r_row = [], [], []
        for level in levels:
            fn = transform(p.kind, level, seed)
            d2 = _moved(d1, fn, "D2")
            if ref is not None:
                r_row.append(1 - linear_cka(ref, features(base, head, d2.test.x)))
            model = fit(copy.deepcopy(base), substream(stream, [d2]), q, specs)
            f_row.append(drop(before, score(model, d1.test, obj), higher))
            n_row.append(score(model, d2.test, obj))
        out["forgetting"].append(f_row)
        out["new"].append(n_row)
        out["repr_distance"].append(r_row)
        out["metric"] = metric_name(obj)
    return out


def _by_level(rows: list[list[float]]) -> list[list[float]]:
    return [list(col) for col in zip(*rows)]


def finding(n: dict[str, Any]) -> str:
    unit = "°" if n["kind"] == "rotation" else ""
    xname = "rotation angle" if n["kind"] == "rotation" else "permuted fraction"
    clause, _ = trend(n["levels"], _by_level(n["forgetting"]), "forgetting of D1", xname, unit)
    text = f"When D2 is D1 under a {n['kind']}, {clause}"
    if n["repr_distance"] and n["repr_distance"][0]:
        dist = [mean_std(v)[0] for v in _by_level(n["repr_distance"])]
        forg = [mean_std(v)[0] for v in _by_level(n["forgetting"])]
        rho = spearman(dist, forg)
        if rho is not None:
            text += (
                f"; against the representation distance (1 - CKA, {min(dist):.2f} to "
                f"{max(dist):.2f}) the rank correlation is {rho:+.2f}"
            )
    return text + "."


def plot(n: dict[str, Any], folder: Path) -> list[Path]:
    fig = figure(10, 3.8)
    ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    xl = "rotation angle (degrees)" if n["kind"] == "rotation" else "fraction of features permuted"
    errorbars(ax, n["levels"], _by_level(n["forgetting"]), label="forgetting of D1")
    ax.set_xlabel(xl)
    ax.set_ylabel(f"D1 {n['metric']} lost")
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_title("forgetting vs task distance")
    if n["repr_distance"] and n["repr_distance"][0]:
        dist = _by_level(n["repr_distance"])
        forg = _by_level(n["forgetting"])
        for i, lv in enumerate(n["levels"]):
            bx.scatter(dist[i], forg[i], s=14, label=f"{lv:g}")
        bx.set_xlabel("representation distance (1 - linear CKA)")
        bx.set_ylabel(f"D1 {n['metric']} lost")
        bx.legend(fontsize=7, title=n["kind"], title_fontsize=7)
        bx.set_title("forgetting vs representation distance")
    fig.suptitle(f"similarity ({len(n['forgetting'])} seed(s), mean ± std)")
    return [save(fig, folder / "similarity.png")]


STUDY = register(
    Study(
        name="similarity",
        summary="forgetting vs a measured task distance (rotation angle or permuted fraction, "
        "and representation distance)",
        claim="more dissimilar tasks forget more",
        params=Params,
        default=DEFAULT,
        check=check,
        run=run,
        finding=finding,
        plot=plot,
    )
)
