"""The steps every scenario builder shares: keep some classes, hold out validation data, make tasks
into a stream, standardise a stream."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from retain.data.sources import Source
from retain.data.stream import Stream, Task, TensorData
from retain.errors import DataError
from retain.utils.seed import generator


def tensors(x: torch.Tensor, y: torch.Tensor) -> TensorData:
    return TensorData(x=x, y=y)


def with_validation(
    train: TensorData, validation: float, seed: int, t: int
) -> tuple[TensorData, TensorData | None]:
    if validation <= 0:
        return train, None
    tr, val = train.split(validation, generator(seed, t, 11))
    return tr, val


def held_out(src: Source) -> tuple[torch.Tensor, torch.Tensor]:
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


def make_stream(
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


def all_classes(src: Source) -> tuple[int, ...] | None:
    return (
        tuple(range(src.n_classes)) if src.objective == "classification" and src.n_classes else None
    )


def _own_storages(stream: Stream) -> bool:
    """Whether no two input tensors of the stream overlap in memory (so scaling each in place
    scales every value once): tensors of their own, or disjoint views of one storage."""
    xs = [d.x for t in stream.tasks for d in (t.train, t.test, t.val) if d is not None]
    xs += [d.x for d in stream.suites.values() if "x" in d]
    if not all(x.dtype == torch.float32 and x.is_contiguous() for x in xs):
        return False
    spans = sorted(
        (x.untyped_storage().data_ptr(), x.storage_offset(), x.storage_offset() + x.numel())
        for x in xs
    )
    return all(a[0] != b[0] or a[2] <= b[1] for a, b in zip(spans, spans[1:]))


def standardize(
    stream: Stream, target: bool = False, in_place: bool = False
) -> tuple[Stream, dict[str, Any]]:
    """Standardise inputs (and regression targets) with the first task's training statistics.

    The first task's statistics are what a model deployed after task 1 would have had: later
    tasks (and the evaluation suites) are scaled the same way and are not looked at in advance.
    ``in_place``: scale the input tensors themselves, chunk by chunk (for a stream nothing else
    uses, e.g. one just read from files: no second copy of the data), when no two share storage.
    """
    in_place = in_place and _own_storages(stream)

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
        if in_place:
            for s in range(0, len(d.x), 65536):
                d.x[s : s + 65536].sub_(mx).div_(sx)
        else:
            t["x"] = (d.x.float() - mx) / sx
        if target:
            t["y"] = (d.y.float() - my) / sy
        return TensorData(**t)

    tasks = [
        dataclasses.replace(t, train=scale(t.train), test=scale(t.test), val=scale(t.val))
        for t in stream.tasks
    ]
    # Evaluation suites are scaled like the tasks (text suites have no inputs to scale).
    suites = {k: scale(v) if "x" in v else v for k, v in stream.suites.items()}
    info = {"x_mean": mx.tolist(), "x_std": sx.tolist()}
    if target:
        info.update(y_mean=float(my), y_std=float(sy))
    return dataclasses.replace(stream, tasks=tuple(tasks), suites=suites), info
