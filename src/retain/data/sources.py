"""Labelled data before it is cut into tasks, and conversions from what users have.

A :class:`Source` holds train and test inputs and targets as tensors, optional extra columns (for
``by_column`` tasks: a domain, a time period), class names, and whether the target is a class or a
number. ``as_source`` accepts what users have: a Source, ``(x, y)`` arrays, ``((x, y), (x, y))``
train/test pairs, a torch ``Dataset``, or a Hugging Face ``datasets.Dataset``; the readers in
:mod:`retain.data.readers` turn files into Sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from retain.data.mapped import compact_rows, take_rows
from retain.data.stream import TensorData
from retain.errors import DataError

# Class ids from this value up must not outnumber the distinct labels tenfold (see
# Source._check_labels): sparse ids below it (ImageNet subsets) are common and cheap.
SPARSE_LABELS = 10_000


@dataclass
class Source:
    """Labelled data. ``x_*``: inputs ``[N, ...]``; ``y_*``: int64 classes or float targets.

    ``columns_*`` map a column name to one value per sample (numpy arrays, any dtype), for
    ``by_column`` scenarios. Images are float32 ``[N, C, H, W]`` in [0, 1]. ``facts`` says how a
    reader made it from a file (target column and whether it was guessed, columns left out or
    encoded), for the run record.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    columns_train: dict[str, np.ndarray] = field(default_factory=dict)
    columns_test: dict[str, np.ndarray] = field(default_factory=dict)
    class_names: list[str] | None = None
    objective: str = "classification"
    name: str = "data"
    is_image: bool = False
    feature_names: list[str] | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train):
            raise DataError(
                f"{self.name}: {len(self.x_train)} training inputs but {len(self.y_train)} targets"
            )
        if (self.x_test is None) != (self.y_test is None):
            raise DataError(f"{self.name}: give both test inputs and test targets, or neither")
        if self.x_test is not None and len(self.x_test) != len(self.y_test):
            raise DataError(
                f"{self.name}: {len(self.x_test)} test inputs but {len(self.y_test)} targets"
            )
        if self.objective == "classification":
            self._check_labels()

    def _check_labels(self) -> None:
        """Class ids are the output layer's rows: one stray value far above the others (a typo,
        a sentinel such as 999999) would build an output layer of that many rows and train for
        hours, so it is refused in one line; so is a negative one (-1 as "no class", or labels
        -1/1), which no output row can hold."""
        ys = [y for y in (self.y_train, self.y_test) if y is not None and len(y)]
        if not ys or ys[0].is_floating_point():
            return
        y = torch.cat([t.reshape(-1) for t in ys])
        lo, hi = int(y.min()), int(y.max())
        if lo < 0:
            raise DataError(
                f"{self.name}: class label {lo} is negative; classes are numbered from 0 (or "
                "given as text): renumber them, or drop the rows without a class"
            )
        distinct = len(torch.unique(y))
        if hi >= SPARSE_LABELS and hi + 1 > 10 * distinct:
            raise DataError(
                f"{self.name}: class label {hi} would make a {hi + 1}-way output layer for "
                f"{distinct} distinct labels; check that value, or number the classes 0 to "
                f"{distinct - 1} (or give them as text)"
            )

    @property
    def n_classes(self) -> int | None:
        if self.objective != "classification":
            return None
        ys = [self.y_train] + ([self.y_test] if self.y_test is not None else [])
        return int(max(int(y.max()) for y in ys if len(y)) + 1)

    def with_test_split(self, fraction: float, seed: int, in_place: bool = False) -> Source:
        """Hold out ``fraction`` of the training data as the test set when there is none.

        ``in_place``: the training rows are moved to the front of ``x_train``'s own storage
        instead of being copied (for a source nothing else uses, e.g. one just read from a file:
        this Source's ``x_train`` is no longer valid afterwards). A table larger than memory is
        split this way without a second copy of its rows.
        """
        if self.x_test is not None:
            return self
        n = len(self.x_train)
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=g)
        k = max(1, int(round(n * fraction)))
        te, tr = perm[:k].sort().values, perm[k:].sort().values
        cols_tr = {c: v[tr.numpy()] for c, v in self.columns_train.items()}
        cols_te = {c: v[te.numpy()] for c, v in self.columns_train.items()}
        x, y = self.x_train, self.y_train
        x_test, y_test = take_rows(x, te), y[te]
        if in_place and x.is_contiguous():
            x_train = compact_rows(x, tr)
        else:
            x_train = take_rows(x, tr)
        return replace(
            self,
            x_train=x_train,
            y_train=y[tr],
            x_test=x_test,
            y_test=y_test,
            columns_train=cols_tr,
            columns_test=cols_te,
        )

    def column(self, name: str, split: str = "train") -> np.ndarray | None:
        """The values of column ``name`` for the ``train`` or ``test`` rows: an extra column, or
        a feature column read from the inputs (None when there is neither)."""
        cols = self.columns_train if split == "train" else self.columns_test
        if name in cols:
            return cols[name]
        x = self.x_train if split == "train" else self.x_test
        if self.feature_names and name in self.feature_names and x is not None:
            return x[:, self.feature_names.index(name)].numpy()
        return None

    @property
    def column_names(self) -> list[str]:
        """The columns :meth:`column` can give."""
        return list(dict.fromkeys([*self.columns_train, *(self.feature_names or [])]))

    def drop_features(self, names: list[str]) -> Source:
        """Remove named feature columns from the inputs (they stay available as columns): the
        column a ``by_column`` scenario splits on is constant within each task and says which
        task a sample is from, so it is not an input."""
        if not self.feature_names or not any(n in self.feature_names for n in names):
            return self
        keep = [i for i, n in enumerate(self.feature_names) if n not in names]
        if not keep:
            raise DataError(f"{self.name}: no features left after removing {names}")
        moved = [n for n in names if n in self.feature_names]
        cols_tr = {**self.columns_train}
        cols_te = {**self.columns_test}
        for n in moved:
            cols_tr.setdefault(n, self.column(n, "train").copy())
            if self.x_test is not None:
                cols_te.setdefault(n, self.column(n, "test").copy())
        idx = torch.tensor(keep)
        return replace(
            self,
            x_train=self.x_train[:, idx],
            x_test=self.x_test[:, idx] if self.x_test is not None else None,
            feature_names=[self.feature_names[i] for i in keep],
            columns_train=cols_tr,
            columns_test=cols_te,
        )

    def limit(self, train: int | None, test: int | None, seed: int) -> Source:
        """A random subset (for quick runs), keeping the columns aligned."""
        out = self
        g = torch.Generator().manual_seed(seed)
        if train is not None and train < len(self.x_train):
            idx = torch.randperm(len(self.x_train), generator=g)[:train].sort().values
            out = replace(
                out,
                x_train=out.x_train[idx],
                y_train=out.y_train[idx],
                columns_train={c: v[idx.numpy()] for c, v in out.columns_train.items()},
            )
        if test is not None and out.x_test is not None and test < len(out.x_test):
            idx = torch.randperm(len(out.x_test), generator=g)[:test].sort().values
            out = replace(
                out,
                x_test=out.x_test[idx],
                y_test=out.y_test[idx],
                columns_test={c: v[idx.numpy()] for c, v in out.columns_test.items()},
            )
        return out


def _tensor(a: Any, name: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    arr = np.asarray(a)
    if arr.dtype == object:
        raise DataError(f"{name} holds non-numeric values; convert them to numbers first")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _targets(y: torch.Tensor, objective: str) -> tuple[torch.Tensor, str]:
    if objective == "auto":
        objective = "regression" if y.is_floating_point() else "classification"
    if objective == "classification":
        if y.is_floating_point() and not torch.all(y == y.round()):
            raise DataError(
                "classification targets must be whole numbers; "
                "set stream.objective=regression for numeric targets"
            )
        y = y.long()
    else:
        y = y.float()
    return y, objective


def from_arrays(
    x: Any,
    y: Any,
    x_test: Any = None,
    y_test: Any = None,
    *,
    objective: str = "auto",
    name: str = "arrays",
    class_names: list[str] | None = None,
) -> Source:
    """A Source from numpy arrays or tensors (float inputs; int classes or float targets)."""
    xt, yt = _tensor(x, "x"), _tensor(y, "y")
    if not xt.is_floating_point():
        xt = xt.float()
    yt, objective = _targets(yt, objective)
    xs = ys = None
    if x_test is not None:
        xs, ys = _tensor(x_test, "x_test"), _tensor(y_test, "y_test")
        xs = xs.float() if not xs.is_floating_point() else xs
        ys, _ = _targets(ys, objective)
    return Source(xt, yt, xs, ys, objective=objective, name=name, class_names=class_names)


def from_torch(
    dataset: Any,
    test: Any = None,
    *,
    objective: str = "auto",
    name: str = "dataset",
    batch_size: int = 1024,
) -> Source:
    """Materialise a map-style torch ``Dataset`` of ``(x, y)`` pairs into tensors, once."""
    from torch.utils.data import DataLoader

    def load(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if len(ds) == 0:
            raise DataError(f"{name}: the dataset is empty")
        xs, ys = [], []
        for xb, yb in DataLoader(ds, batch_size=batch_size, shuffle=False):
            xs.append(torch.as_tensor(xb))
            ys.append(torch.as_tensor(yb))
        return torch.cat(xs), torch.cat(ys)

    x, y = load(dataset)
    xt, yt = load(test) if test is not None else (None, None)
    return from_arrays(x, y, xt, yt, objective=objective, name=name)


def as_source(data: Any, *, objective: str = "auto", name: str | None = None) -> Source:
    """Turn what a user has into a :class:`Source` (see the module docstring)."""
    if isinstance(data, Source):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        a, b = data
        if isinstance(a, tuple) and isinstance(b, tuple):
            return from_arrays(a[0], a[1], b[0], b[1], objective=objective, name=name or "arrays")
        return from_arrays(a, b, objective=objective, name=name or "arrays")
    mod = type(data).__module__
    if mod.startswith("datasets"):
        from retain.data.readers import from_hf

        return from_hf(data, objective=objective, name=name or "hf")
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return from_torch(data, objective=objective, name=name or "dataset")
    raise DataError(
        f"cannot use a {type(data).__name__} as data: give (x, y) arrays, a torch Dataset, "
        "a Hugging Face Dataset or a retain Source"
    )


def lm_data(token_ids: list[list[int]], block_size: int, pad_id: int = 0) -> TensorData:
    """Pack token sequences into fixed-size blocks with ``labels`` (padding labelled -100).

    Examples:
        >>> lm_data([[1, 2, 3], [4]], block_size=3).get("labels").tolist()
        [[1, 2, 3], [4, -100, -100]]
    """
    flat = [t for seq in token_ids for t in seq]
    if not flat:
        raise DataError("no tokens to train on")
    n = max(1, -(-len(flat) // block_size))
    ids = torch.full((n, block_size), pad_id, dtype=torch.long)
    mask = torch.zeros((n, block_size), dtype=torch.long)
    for i in range(n):
        chunk = flat[i * block_size : (i + 1) * block_size]
        ids[i, : len(chunk)] = torch.tensor(chunk)
        mask[i, : len(chunk)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return TensorData(input_ids=ids, attention_mask=mask, labels=labels)
