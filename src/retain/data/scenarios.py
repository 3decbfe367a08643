"""Scenario builders: cut any labelled source into a stream of tasks.

==============  ==========================================================================
split           class groups per task; class-IL (one head over all classes), task-IL (other
                tasks' logits masked at train and test) or domain-IL (labels mapped to their
                position within the task's group)
permuted        every task sees all the data under its own fixed pixel permutation
rotated         every task sees all the data rotated by its own fixed angle
iid             the data cut into N random chunks of one distribution (e.g. two halves)
prior_shift     the same classes in shifting proportions per task, e.g. 80/10/10 then 10/90/0
by_column       one task per value (or group of values) of a column: domain, time period
from_sources    one task per source, e.g. one file per month
==============  ==========================================================================

Every builder takes anything :func:`retain.data.sources.as_source` accepts and a ``seed``; the same
seed gives the same tasks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from retain.data.sources import Source, as_source
from retain.data.stream import Stream, Task, TensorData
from retain.errors import DataError
from retain.utils.seed import generator


def _data(x: torch.Tensor, y: torch.Tensor) -> TensorData:
    return TensorData(x=x, y=y)


def _with_val(
    train: TensorData, validation: float, seed: int, t: int
) -> tuple[TensorData, TensorData | None]:
    if validation <= 0:
        return train, None
    tr, val = train.split(validation, generator(seed, t, 11))
    return tr, val


def _test(src: Source) -> tuple[torch.Tensor, torch.Tensor]:
    if src.x_test is None:
        raise DataError(
            f"{src.name}: no test set; call source.with_test_split(fraction, seed) first"
        )
    return src.x_test, src.y_test


def select_classes(src: Source, classes: list[int] | None) -> Source:
    """Keep only ``classes`` and renumber them 0..k-1 in the given order."""
    if classes is None:
        return src
    if src.objective != "classification":
        raise DataError("stream.classes applies to classification data only")
    if len(set(classes)) != len(classes):
        raise DataError(f"stream.classes has duplicates: {classes}")
    n = src.n_classes or 0
    bad = [c for c in classes if not 0 <= c < n]
    if bad:
        raise DataError(f"stream.classes {bad} do not exist: the data has classes 0..{n - 1}")
    lut = torch.full((n,), -1, dtype=torch.long)
    lut[torch.tensor(classes)] = torch.arange(len(classes))

    def pick(x: torch.Tensor, y: torch.Tensor, cols: dict[str, np.ndarray]) -> tuple:
        keep = lut[y] >= 0
        k = keep.numpy()
        return x[keep], lut[y[keep]], {c: v[k] for c, v in cols.items()}

    xtr, ytr, ctr = pick(src.x_train, src.y_train, src.columns_train)
    xte, yte, cte = (
        pick(src.x_test, src.y_test, src.columns_test)
        if src.x_test is not None
        else (None, None, {})
    )
    names = [src.class_names[c] for c in classes] if src.class_names else [str(c) for c in classes]
    return Source(
        xtr,
        ytr,
        xte,
        yte,
        ctr,
        cte,
        names,
        src.objective,
        src.name,
        src.is_image,
        src.feature_names,
    )


def _stream(
    tasks: list[Task],
    src: Source,
    setting: str,
    n_outputs: int | None,
    name: str,
    class_names: list[str] | None = None,
) -> Stream:
    if src.objective == "regression":
        n_outputs = int(src.y_train[0].numel()) if len(src.y_train) else 1
    names = class_names if class_names is not None else src.class_names
    return Stream(
        tuple(tasks),
        setting=setting,
        objective=src.objective,
        n_outputs=n_outputs,
        class_names=tuple(names) if names else None,
        name=name,
    )


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
    order = list(class_order) if class_order is not None else list(range(src.n_classes or 0))
    if sorted(order) != sorted(set(order)) or any(not 0 <= c < (src.n_classes or 0) for c in order):
        raise DataError(f"stream.class_order must list distinct existing classes, got {order}")
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
    if setting == "auto":
        setting = "class_il"
    xte, yte = _test(src)
    tasks = []
    groups = [order[i * classes_per_task : (i + 1) * classes_per_task] for i in range(n_tasks)]
    for t, group in enumerate(groups):
        g = torch.tensor(group)
        tr_mask, te_mask = torch.isin(src.y_train, g), torch.isin(yte, g)
        ytr, yts = src.y_train[tr_mask], yte[te_mask]
        task_classes: tuple[int, ...] = tuple(group)
        if setting == "domain_il":
            pos = torch.full((src.n_classes or 0,), -1, dtype=torch.long)
            pos[g] = torch.arange(len(group))
            ytr, yts = pos[ytr], pos[yts]
            task_classes = tuple(range(classes_per_task))
        train, val = _with_val(_data(src.x_train[tr_mask], ytr), validation, seed, t)
        label = "-".join(src.class_names[c] if src.class_names else str(c) for c in group)
        tasks.append(
            Task(
                f"t{t + 1}",
                train,
                _data(xte[te_mask], yts),
                val,
                task_classes,
                domain=f"classes {label}",
            )
        )
    n_out = classes_per_task if setting == "domain_il" else src.n_classes
    names = None
    if setting == "domain_il":
        names = [
            "/".join(
                (src.class_names or [str(c) for c in range(src.n_classes or 0)])[grp[p]]
                for grp in groups
            )
            for p in range(classes_per_task)
        ]
    return _stream(tasks, src, setting, n_out, name or f"split-{src.name}", names)


def permuted(
    source: Any, n_tasks: int = 10, validation: float = 0.0, seed: int = 0, name: str | None = None
) -> Stream:
    """Every task: all the data under its own fixed random permutation of the input features.

    Every task is permuted (mammoth's P-MNIST), including the first.
    """
    src = as_source(source).with_test_split(0.2, seed)
    xte, yte = _test(src)
    shape = src.x_train.shape[1:]
    d = math.prod(shape)
    tasks = []
    for t in range(n_tasks):
        perm = torch.randperm(d, generator=generator(seed, t, 3))

        def apply(x: torch.Tensor, perm: torch.Tensor = perm) -> torch.Tensor:
            return x.reshape(len(x), d)[:, perm].reshape(len(x), *shape)

        train, val = _with_val(_data(apply(src.x_train), src.y_train), validation, seed, t)
        tasks.append(
            Task(
                f"p{t + 1}",
                train,
                _data(apply(xte), yte),
                val,
                _all_classes(src),
                domain=f"permutation {t + 1}",
            )
        )
    return _stream(tasks, src, "domain_il", src.n_classes, name or f"permuted-{src.name}")


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
    xte, yte = _test(src)
    if angles is None:
        g = generator(seed, 0, 5)
        angles = [float(torch.rand((), generator=g)) * max_angle for _ in range(n_tasks)]
    elif len(angles) != n_tasks:
        n_tasks = len(angles)
    tasks = []
    for t, deg in enumerate(angles):
        train, val = _with_val(
            _data(rotate_images(src.x_train, deg), src.y_train), validation, seed, t
        )
        tasks.append(
            Task(
                f"r{t + 1}",
                train,
                _data(rotate_images(xte, deg), yte),
                val,
                _all_classes(src),
                domain=f"rotation {deg:.1f} deg",
                meta={"angle": deg},
            )
        )
    return _stream(tasks, src, "domain_il", src.n_classes, name or f"rotated-{src.name}")


def _all_classes(src: Source) -> tuple[int, ...] | None:
    return (
        tuple(range(src.n_classes)) if src.objective == "classification" and src.n_classes else None
    )


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
) -> Stream:
    """The data cut into ``n_tasks`` random chunks from one distribution (train and test alike)."""
    src = select_classes(as_source(source), classes).with_test_split(0.2, seed)
    xte, yte = _test(src)
    tr_chunks = _chunks(len(src.x_train), n_tasks, generator(seed, 0, 13))
    te_chunks = _chunks(len(xte), n_tasks, generator(seed, 1, 13))
    tasks = []
    for t, (a, b) in enumerate(zip(tr_chunks, te_chunks)):
        train, val = _with_val(_data(src.x_train[a], src.y_train[a]), validation, seed, t)
        tasks.append(
            Task(
                f"D{t + 1}",
                train,
                _data(xte[b], yte[b]),
                val,
                _all_classes(src),
                domain=f"chunk {t + 1} of {n_tasks}",
            )
        )
    return _stream(tasks, src, "domain_il", src.n_classes, name or f"iid-{src.name}")


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
    xte, yte = _test(src)
    tr = _draw_by_proportion(src.y_train, proportions, samples_per_task, generator(seed, 0, 17))
    n_test = None
    te = _draw_by_proportion(yte, proportions, n_test, generator(seed, 1, 17))
    tasks = []
    for t, (a, b) in enumerate(zip(tr, te)):
        train, val = _with_val(_data(src.x_train[a], src.y_train[a]), validation, seed, t)
        mix = "/".join(f"{round(p * 100)}" for p in proportions[t])
        tasks.append(
            Task(
                f"shift{t + 1}",
                train,
                _data(xte[b], yte[b]),
                val,
                _all_classes(src),
                domain=f"class mix {mix} %",
                meta={"proportions": list(proportions[t])},
            )
        )
    return _stream(tasks, src, "domain_il", k, name or f"prior-shift-{src.name}")


def _match(col: np.ndarray, value: Any) -> np.ndarray:
    values = value if isinstance(value, (list, tuple)) else [value]
    mask = np.zeros(len(col), dtype=bool)
    for v in values:
        if np.issubdtype(col.dtype, np.number) and isinstance(v, (int, float)):
            mask |= np.isclose(col.astype(float), float(v))
        else:
            mask |= col.astype(str) == str(v)
    return mask


def by_column(
    source: Any,
    column: str,
    groups: list[Any] | None = None,
    classes: list[int] | None = None,
    validation: float = 0.0,
    seed: int = 0,
    name: str | None = None,
) -> Stream:
    """One task per value of ``column`` (or per group of values), in ``groups`` order."""
    src = as_source(source)
    if column not in src.columns_train:
        from retain.errors import did_you_mean

        cols = sorted(src.columns_train)
        raise DataError(
            f"column '{column}' not found{did_you_mean(column, cols)}; "
            f"columns: {', '.join(cols) or 'none'}"
        )
    src = select_classes(src, classes).with_test_split(0.2, seed)
    col_tr, col_te = src.columns_train[column], src.columns_test[column]
    if groups is None:
        uniq = np.unique(col_tr)
        if len(uniq) > 50:
            raise DataError(
                f"column '{column}' has {len(uniq)} distinct values; give stream.groups "
                "(lists of values), one per task"
            )
        groups = [u.item() if hasattr(u, "item") else u for u in uniq]
    tasks = []
    for t, gv in enumerate(groups):
        a, b = _match(col_tr, gv), _match(col_te, gv)
        text = "|".join(map(str, gv)) if isinstance(gv, (list, tuple)) else str(gv)
        at, bt = torch.from_numpy(np.nonzero(a)[0]), torch.from_numpy(np.nonzero(b)[0])
        train, val = _with_val(_data(src.x_train[at], src.y_train[at]), validation, seed, t)
        tasks.append(
            Task(
                f"{column}={text}",
                train,
                _data(src.x_test[bt], src.y_test[bt]),
                val,
                _all_classes(src),
                domain=f"{column}={text}",
            )
        )
    return _stream(tasks, src, "domain_il", src.n_classes, name or f"{src.name}-by-{column}")


def from_sources(
    sources: list[Any],
    names: list[str] | None = None,
    validation: float = 0.0,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str = "files",
) -> Stream:
    """One task per source (e.g. one file per month): D1, then D2, ..."""
    srcs = [as_source(s) for s in sources]
    if not srcs:
        raise DataError("no sources given")
    srcs = _shared_labels(srcs)
    names = names or [s.name for s in srcs]
    k = max((s.n_classes or 0) for s in srcs) if srcs[0].objective == "classification" else None
    tasks = []
    for t, (s, n) in enumerate(zip(srcs, names)):
        if s.objective != srcs[0].objective:
            raise DataError(
                f"'{n}' has {s.objective} targets but '{names[0]}' has {srcs[0].objective}"
            )
        s = s.with_test_split(test_fraction, seed + t)
        train, val = _with_val(_data(s.x_train, s.y_train), validation, seed, t)
        tasks.append(
            Task(n, train, _data(s.x_test, s.y_test), val, tuple(range(k)) if k else None, domain=n)
        )
    first = srcs[0]
    return _stream(tasks, first, "domain_il", k, name)


def _shared_labels(srcs: list[Source]) -> list[Source]:
    """Give string class names one id across all sources (each file maps its own otherwise)."""
    if not all(s.class_names for s in srcs) or srcs[0].objective != "classification":
        return srcs
    union = sorted({n for s in srcs for n in s.class_names})
    out = []
    for s in srcs:
        lut = torch.tensor([union.index(n) for n in s.class_names])
        yte = lut[s.y_test] if s.y_test is not None else None
        out.append(
            Source(
                s.x_train,
                lut[s.y_train],
                s.x_test,
                yte,
                s.columns_train,
                s.columns_test,
                union,
                s.objective,
                s.name,
                s.is_image,
                s.feature_names,
            )
        )
    return out


def standardize(stream: Stream, target: bool = False) -> tuple[Stream, dict[str, Any]]:
    """Standardise inputs (and regression targets) with the first task's training statistics.

    The first task's statistics are what a model deployed after task 1 would have had: later
    tasks are scaled the same way and are not looked at in advance.
    """
    import dataclasses

    first = stream.tasks[0].train
    mx = first.x.float().mean(0)
    sx = first.x.float().std(0).nan_to_num(1.0)
    sx = torch.where(sx < 1e-6, torch.ones_like(sx), sx)  # constant in task 1: leave unscaled
    my = first.y.float().mean(0) if target else None
    sy = first.y.float().std().clamp_min(1e-6) if target else None

    def scale(d: TensorData | None) -> TensorData | None:
        if d is None:
            return None
        t = {k: v for k, v in d.tensors.items() if k != "task"}
        t["x"] = (d.x.float() - mx) / sx
        if target:
            t["y"] = (d.y.float() - my) / sy
        return TensorData(**t)

    tasks = [
        dataclasses.replace(t, train=scale(t.train), test=scale(t.test), val=scale(t.val))
        for t in stream.tasks
    ]
    info = {"x_mean": mx.tolist(), "x_std": sx.tolist()}
    if target:
        info.update(y_mean=float(my), y_std=float(sy))
    return dataclasses.replace(stream, tasks=tuple(tasks)), info
