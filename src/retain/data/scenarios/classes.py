"""Scenarios that choose which samples each task gets: class groups (``split``), random chunks
(``iid``) and shifting class proportions (``prior_shift``)."""

from __future__ import annotations

import math
from typing import Any

import torch

from retain.data.mapped import group_rows, take_rows
from retain.data.scenarios.common import (
    all_classes,
    held_out,
    make_stream,
    select_classes,
    tensors,
    with_validation,
)
from retain.data.sources import Source, as_source
from retain.data.stream import Stream, Task
from retain.errors import DataError
from retain.utils.seed import generator


def split(
    source: Any,
    n_tasks: int | None = None,
    classes_per_task: int | None = None,
    class_order: list[int] | None = None,
    classes: list[int] | None = None,
    setting: str = "class_il",
    validation: float = 0.0,
    seed: int = 0,
    name: str | None = None,
) -> Stream:
    """Class groups per task: ``n_tasks`` groups of ``classes_per_task`` classes.

    Examples:
        >>> from retain.data.builtin import load_builtin
        >>> s = split(load_builtin("digits").with_test_split(0.2, 0), n_tasks=5)
        >>> [t.classes for t in s.tasks][:2]
        [(0, 1), (2, 3)]
    """
    src = select_classes(as_source(source), classes)
    if src.objective != "classification":
        raise DataError("scenario 'split' needs classification targets")
    src = src.with_test_split(0.2, seed)
    groups, per_task = _class_groups(_class_order(src, class_order), n_tasks, classes_per_task)
    if setting == "auto":
        setting = "class_il"
    tasks = [
        _split_task(src, t, group, setting, validation, seed) for t, group in enumerate(groups)
    ]
    n_out = per_task if setting == "domain_il" else src.n_classes
    names = _position_names(src, groups, per_task) if setting == "domain_il" else None
    return make_stream(tasks, src, setting, n_out, name or f"split-{src.name}", names)


def _class_order(src: Source, class_order: list[int] | None) -> list[int]:
    """The order in which classes arrive (default: by class id), checked against the data."""
    order = list(class_order) if class_order is not None else list(range(src.n_classes or 0))
    if sorted(order) != sorted(set(order)) or any(not 0 <= c < (src.n_classes or 0) for c in order):
        raise DataError(f"stream.class_order must list distinct existing classes, got {order}")
    return order


def _class_groups(
    order: list[int], n_tasks: int | None, classes_per_task: int | None
) -> tuple[list[list[int]], int]:
    """``order`` cut into ``n_tasks`` groups of ``classes_per_task`` (5 tasks when neither is set;
    either one is derived from the other), and the number of classes per group."""
    if n_tasks is None and classes_per_task is None:
        n_tasks = 5
    if classes_per_task is None:
        if len(order) % n_tasks:
            raise DataError(
                f"{len(order)} classes do not divide into {n_tasks} tasks; set "
                "stream.classes_per_task or stream.classes"
            )
        classes_per_task = len(order) // n_tasks
    if n_tasks is None:
        n_tasks = len(order) // classes_per_task
    if n_tasks * classes_per_task > len(order):
        raise DataError(
            f"{n_tasks} tasks x {classes_per_task} classes need {n_tasks * classes_per_task} "
            f"classes but the data has {len(order)}"
        )
    groups = [order[i * classes_per_task : (i + 1) * classes_per_task] for i in range(n_tasks)]
    return groups, classes_per_task


def _split_task(
    src: Source, t: int, group: list[int], setting: str, validation: float, seed: int
) -> Task:
    """Task ``t``: the samples of the classes in ``group``; in domain-IL each label becomes its
    position within the group."""
    xte, yte = held_out(src)
    g = torch.tensor(group)
    tr_mask, te_mask = torch.isin(src.y_train, g), torch.isin(yte, g)
    ytr, yts = src.y_train[tr_mask], yte[te_mask]
    task_classes: tuple[int, ...] = tuple(group)
    if setting == "domain_il":
        pos = torch.full((src.n_classes or 0,), -1, dtype=torch.long)
        pos[g] = torch.arange(len(group))
        ytr, yts = pos[ytr], pos[yts]
        task_classes = tuple(range(len(group)))
    train, val = with_validation(tensors(src.x_train[tr_mask], ytr), validation, seed, t)
    label = "-".join(src.class_names[c] if src.class_names else str(c) for c in group)
    return Task(
        f"t{t + 1}", train, tensors(xte[te_mask], yts), val, task_classes, domain=f"classes {label}"
    )


def _position_names(src: Source, groups: list[list[int]], per_task: int) -> list[str]:
    """Domain-IL output names: output p is the p-th class of every group, e.g. ``0/2/4``."""
    names = src.class_names or [str(c) for c in range(src.n_classes or 0)]
    return ["/".join(names[grp[p]] for grp in groups) for p in range(per_task)]


def _chunks(n: int, k: int, g: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=g)
    return [c.sort().values for c in perm.tensor_split(k)]


def iid(
    source: Any,
    n_tasks: int = 2,
    classes: list[int] | None = None,
    validation: float = 0.0,
    seed: int = 0,
    name: str | None = None,
    in_place: bool = False,
) -> Stream:
    """The data cut into ``n_tasks`` random chunks from one distribution (train and test alike).

    ``in_place``: the training rows are regrouped by chunk within the source's own storage and
    each task's inputs are a view of it (for a source nothing else uses: no copy of the data).
    """
    src = select_classes(as_source(source), classes).with_test_split(0.2, seed)
    xte, yte = held_out(src)
    tr_chunks = _chunks(len(src.x_train), n_tasks, generator(seed, 0, 13))
    te_chunks = _chunks(len(xte), n_tasks, generator(seed, 1, 13))
    xs = group_rows(src.x_train, tr_chunks) if in_place and classes is None else None
    tasks = []
    for t, (a, b) in enumerate(zip(tr_chunks, te_chunks)):
        # take_rows: a chunk of a memory-mapped table is itself mapped, not copied into memory.
        x = xs[t] if xs is not None else take_rows(src.x_train, a)
        train, val = with_validation(tensors(x, src.y_train[a]), validation, seed, t)
        tasks.append(
            Task(
                f"D{t + 1}",
                train,
                tensors(take_rows(xte, b), yte[b]),
                val,
                all_classes(src),
                domain=f"chunk {t + 1} of {n_tasks}",
            )
        )
    return make_stream(tasks, src, "domain_il", src.n_classes, name or f"iid-{src.name}")


def _draw_by_proportion(
    y: torch.Tensor, props: list[list[float]], n_per_task: int | None, g: torch.Generator
) -> list[torch.Tensor]:
    """Disjoint index sets, one per task, with class c making up props[t][c] of task t."""
    k = len(props[0])
    pools = [torch.nonzero(y == c).flatten() for c in range(k)]
    pools = [p[torch.randperm(len(p), generator=g)] for p in pools]
    need = [sum(row[c] for row in props) for c in range(k)]
    # Largest per-task size that the rarest class can supply across all tasks.
    cap = min(len(pools[c]) / need[c] for c in range(k) if need[c] > 0)
    n = int(math.floor(cap)) if n_per_task is None else n_per_task
    if n > cap + 1e-9:
        raise DataError(
            f"prior_shift: {n} samples per task need more examples of some class than "
            f"the data has; at most {int(cap)} per task fit"
        )
    used = [0] * k
    out = []
    for row in props:
        counts = [int(round(p * n)) for p in row]
        idx = []
        for c, m in enumerate(counts):
            idx.append(pools[c][used[c] : used[c] + m])
            used[c] += m
        out.append(torch.cat(idx).sort().values)
    return out


def prior_shift(
    source: Any,
    proportions: list[list[float]],
    classes: list[int] | None = None,
    samples_per_task: int | None = None,
    validation: float = 0.0,
    seed: int = 0,
    name: str | None = None,
) -> Stream:
    """The same classes in shifting proportions: task t draws class c with ``proportions[t][c]``.

    Example: ``[[0.8, 0.1, 0.1], [0.1, 0.9, 0.0]]`` (cats, dogs, birds): the class that
    vanishes from the second task is the one that gets forgotten. Tasks are disjoint; test sets
    follow each task's own proportions.
    """
    src = select_classes(as_source(source), classes).with_test_split(0.2, seed)
    k = src.n_classes or 0
    for t, row in enumerate(proportions):
        if len(row) != k:
            raise DataError(
                f"stream.proportions row {t + 1} has {len(row)} entries for {k} classes; "
                "give one proportion per class (use stream.classes to pick classes)"
            )
        if any(p < 0 for p in row) or abs(sum(row) - 1.0) > 1e-6:
            raise DataError(f"stream.proportions row {t + 1} must be >= 0 and sum to 1, got {row}")
    xte, yte = held_out(src)
    tr = _draw_by_proportion(src.y_train, proportions, samples_per_task, generator(seed, 0, 17))
    n_test = None
    te = _draw_by_proportion(yte, proportions, n_test, generator(seed, 1, 17))
    tasks = []
    for t, (a, b) in enumerate(zip(tr, te)):
        train, val = with_validation(tensors(src.x_train[a], src.y_train[a]), validation, seed, t)
        mix = "/".join(f"{round(p * 100)}" for p in proportions[t])
        tasks.append(
            Task(
                f"shift{t + 1}",
                train,
                tensors(xte[b], yte[b]),
                val,
                all_classes(src),
                domain=f"class mix {mix} %",
                meta={"proportions": list(proportions[t])},
            )
        )
    return make_stream(tasks, src, "domain_il", k, name or f"prior-shift-{src.name}")
