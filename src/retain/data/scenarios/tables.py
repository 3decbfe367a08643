"""Scenarios read from tables: one task per value of a column (``by_column``) or one task per file
(``from_sources``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from retain.data.label_spaces import files_setting, merge_labels
from retain.data.scenarios.common import (
    all_classes,
    make_stream,
    select_classes,
    tensors,
    with_validation,
)
from retain.data.sources import as_source
from retain.data.stream import Stream, Task
from retain.errors import DataError


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
    if column not in src.column_names:
        from retain.errors import did_you_mean

        cols = sorted(src.column_names)
        raise DataError(
            f"column '{column}' not found{did_you_mean(column, cols)}; "
            f"columns: {', '.join(cols) or 'none'}"
        )
    src = select_classes(src, classes).with_test_split(0.2, seed)
    col_tr, col_te = src.column(column, "train"), src.column(column, "test")
    if col_tr.dtype.kind == "f" and np.all(col_tr == np.round(col_tr)):
        # Integer codes read as float32 features (e.g. region 1, 2) name their tasks as integers.
        col_tr, col_te = col_tr.astype(np.int64), col_te.astype(np.int64)
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
        train, val = with_validation(tensors(src.x_train[at], src.y_train[at]), validation, seed, t)
        tasks.append(
            Task(
                f"{column}={text}",
                train,
                tensors(src.x_test[bt], src.y_test[bt]),
                val,
                all_classes(src),
                domain=f"{column}={text}",
            )
        )
    return make_stream(tasks, src, "domain_il", src.n_classes, name or f"{src.name}-by-{column}")


def from_sources(
    sources: list[Any],
    names: list[str] | None = None,
    validation: float = 0.0,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str = "files",
    setting: str = "auto",
    labels: str = "ids",
    warnings: list[str] | None = None,
) -> Stream:
    """One task per source (e.g. one file per month): D1, then D2, ...

    ``labels`` says how the sources' classes share outputs (``ids`` or ``names``) and ``setting``
    defaults to what that gives (see :mod:`retain.data.label_spaces`). Warnings about the label
    space are appended to ``warnings`` when a list is given.
    """
    srcs = [as_source(s) for s in sources]
    if not srcs:
        raise DataError("no sources given")
    names = names or [s.name for s in srcs]
    first = srcs[0].feature_names
    for s, n in zip(srcs, names):
        if s.objective != srcs[0].objective:
            raise DataError(
                f"'{n}' has {s.objective} targets but '{names[0]}' has {srcs[0].objective}"
            )
        # Same width but other columns (or another order) would train on the wrong features.
        if first and s.feature_names and s.feature_names != first:
            raise DataError(
                f"'{n}' has the feature columns {', '.join(s.feature_names)} but '{names[0]}' "
                f"has {', '.join(first)}; give every file the same columns in the same order"
            )
    srcs, class_names, notes = merge_labels(srcs, names, labels)
    if warnings is not None:
        warnings.extend(notes)
    srcs = [s.with_test_split(test_fraction, seed + t) for t, s in enumerate(srcs)]
    classification = srcs[0].objective == "classification"
    k = max((s.n_classes or 0) for s in srcs) if classification else None
    own = [
        set(torch.unique(torch.cat([s.y_train, s.y_test])).tolist()) if classification else set()
        for s in srcs
    ]
    setting = files_setting(setting, labels, own, names) if classification else "domain_il"
    tasks = []
    for t, (s, n) in enumerate(zip(srcs, names)):
        train, val = with_validation(tensors(s.x_train, s.y_train), validation, seed, t)
        if not k:
            classes = None
        elif setting == "domain_il":
            classes = tuple(range(k))
        else:
            classes = tuple(sorted(own[t]))
        tasks.append(Task(n, train, tensors(s.x_test, s.y_test), val, classes, domain=n))
    return make_stream(tasks, srcs[0], setting, k, name, class_names)
