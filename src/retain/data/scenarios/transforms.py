"""Scenarios that transform the inputs: every task sees all the data, under its own pixel
permutation (``permuted``) or rotation (``rotated``)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from retain.data.scenarios.common import (
    all_classes,
    held_out,
    make_stream,
    tensors,
    with_validation,
)
from retain.data.sources import as_source
from retain.data.stream import Stream, Task
from retain.errors import DataError
from retain.utils.seed import generator


def permuted(
    source: Any, n_tasks: int = 10, validation: float = 0.0, seed: int = 0, name: str | None = None
) -> Stream:
    """Every task: all the data under its own fixed random permutation of the input features.

    Every task is permuted (mammoth's P-MNIST), including the first.
    """
    src = as_source(source).with_test_split(0.2, seed)
    xte, yte = held_out(src)
    shape = src.x_train.shape[1:]
    d = math.prod(shape)
    tasks = []
    for t in range(n_tasks):
        perm = torch.randperm(d, generator=generator(seed, t, 3))

        def apply(x: torch.Tensor, perm: torch.Tensor = perm) -> torch.Tensor:
            return x.reshape(len(x), d)[:, perm].reshape(len(x), *shape)

        train, val = with_validation(tensors(apply(src.x_train), src.y_train), validation, seed, t)
        tasks.append(
            Task(
                f"p{t + 1}",
                train,
                tensors(apply(xte), yte),
                val,
                all_classes(src),
                domain=f"permutation {t + 1}",
            )
        )
    return make_stream(tasks, src, "domain_il", src.n_classes, name or f"permuted-{src.name}")


def rotate_images(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate ``[N, C, H, W]`` images counter-clockwise about their centre (bilinear, zero fill)."""
    if x.dim() != 4:
        raise DataError(f"scenario 'rotated' needs images [N, C, H, W], got shape {tuple(x.shape)}")
    a = math.radians(degrees)
    theta = torch.tensor(
        [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=torch.float32
    )
    out = []
    for chunk in x.split(8192):
        grid = F.affine_grid(theta.expand(len(chunk), 2, 3), list(chunk.shape), align_corners=False)
        out.append(
            F.grid_sample(
                chunk.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )
    return torch.cat(out)


def rotated(
    source: Any,
    n_tasks: int = 10,
    angles: list[float] | None = None,
    max_angle: float = 180.0,
    validation: float = 0.0,
    seed: int = 0,
    name: str | None = None,
) -> Stream:
    """Every task: all the images rotated by its own fixed angle, drawn from [0, max_angle)."""
    src = as_source(source).with_test_split(0.2, seed)
    xte, yte = held_out(src)
    if angles is None:
        g = generator(seed, 0, 5)
        angles = [float(torch.rand((), generator=g)) * max_angle for _ in range(n_tasks)]
    elif len(angles) != n_tasks:
        n_tasks = len(angles)
    tasks = []
    for t, deg in enumerate(angles):
        train, val = with_validation(
            tensors(rotate_images(src.x_train, deg), src.y_train), validation, seed, t
        )
        tasks.append(
            Task(
                f"r{t + 1}",
                train,
                tensors(rotate_images(xte, deg), yte),
                val,
                all_classes(src),
                domain=f"rotation {deg:.1f} deg",
                meta={"angle": deg},
            )
        )
    return make_stream(tasks, src, "domain_il", src.n_classes, name or f"rotated-{src.name}")
