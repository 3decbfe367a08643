"""Readers that turn data files into :class:`~retain.data.sources.Source` objects.

Formats: CSV and Parquet tables, Hugging Face ``datasets`` (objects or ``save_to_disk`` folders),
and, from :mod:`retain.data.array_readers` (re-exported here), IDX (MNIST, Fashion-MNIST), the
classic ``mnist.pkl.gz``, NumPy ``.npz`` and CIFAR-10 python batches. :func:`read_file` picks the
reader from the path.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retain.data import tables
from retain.data.array_readers import (
    as_images,
    dataset_name,
    find_idx_files,
    is_cifar_folder,
    mnist_pkl_source,
    read_cifar10,
    read_idx,
    read_idx_folder,
    read_mnist_pkl,
    read_npz,
    safe_load_pickle,
)
from retain.data.mapped import empty_rows
from retain.data.sources import Source, from_arrays
from retain.data.tables import MISSING, TARGET_NAMES, check_block, is_parquet, pick_target
from retain.data.tables import no_column as _no_column
from retain.errors import DataError

__all__ = [
    "MISSING",
    "TARGET_NAMES",
    "find_idx_files",
    "from_hf",
    "is_cifar_folder",
    "mnist_pkl_source",
    "read_cifar10",
    "read_columns",
    "read_file",
    "read_idx",
    "read_idx_folder",
    "read_mnist_pkl",
    "read_npz",
    "read_table",
    "safe_load_pickle",
]

_INPUT_NAMES = ("image", "img", "pixels", "x")
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
SUPPORTED = (
    ".csv, .csv.gz, .parquet, .pq, .npz, .pkl.gz (MNIST pickle), IDX files, "
    "cifar-10-python.tar.gz, or a Hugging Face datasets folder"
)
_pick_target = pick_target


def _class_ids(
    ys: list[np.ndarray], objective: str, where: Any, target: str
) -> tuple[list[np.ndarray], list[str] | None]:
    """Text targets become ids in sorted order (over train and test together), with their names."""
    if ys[0].dtype.kind not in "USO":
        return [y.astype(np.int64) if y.dtype.kind in "bi" else y for y in ys], None
    if objective == "regression":
        raise DataError(
            f"{where}: target column '{target}' holds text; it can only be a classification target"
        )
    names = np.array(sorted({str(v) for y in ys for v in y.tolist()}))
    return [np.searchsorted(names, y.astype(str)) for y in ys], [str(n) for n in names]


def read_columns(path: str | Path) -> dict[str, np.ndarray]:
    """The columns of a CSV or Parquet table by name (int64, float64 with NaN for missing cells,
    or text), as :func:`read_table` parses them.

    Examples:
        >>> cols = read_columns("jan.csv")  # doctest: +SKIP
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data file '{path}' not found (looked for {path.absolute()})")
    if not is_parquet(path) and not path.name.lower().endswith((".csv", ".csv.gz")):
        raise DataError(f"{path}: not a .csv, .csv.gz or .parquet table")
    return tables.read_columns(path)


def read_table(
    path: str | Path,
    target: str | None,
    features: list[str] | None = None,
    objective: str = "auto",
    mapped: bool | None = None,
    engine: str | None = None,
) -> Source:
    """A Source from a CSV (header row required) or Parquet table; no test split.

    ``features`` defaults to every numeric column but the target; text columns are never silently
    turned into numbers. The columns that are not features (text) are kept in ``columns_train``,
    and every column is available through ``Source.column`` for ``by_column`` scenarios. Text
    targets become class ids in sorted order, named by ``class_names``. The inputs are float32,
    memory-mapped when ``mapped`` (default: when they would take more than half the available
    memory); ``engine`` reads CSV with ``pyarrow`` or ``python`` (default: pyarrow when
    installed). See :mod:`retain.data.tables`.

    Examples:
        >>> src = read_table("adult.csv", target="income")  # doctest: +SKIP
    """
    path = Path(path)
    t = tables.read_table_data(path, target, features, mapped=mapped, engine=engine)
    y = t.y
    if y.dtype.kind == "f" and np.isnan(y).any():
        raise DataError(
            f"{path}: target column '{t.target}' has {int(np.isnan(y).sum())} missing "
            "values; drop those rows"
        )
    if objective == "auto":
        objective = "regression" if y.dtype.kind == "f" else "classification"
    (y,), class_names = _class_ids([y], objective, path, t.target)
    src = from_arrays(t.x, y, objective=objective, name=dataset_name(path), class_names=class_names)
    facts = {
        "target": t.target,
        "target_auto": t.target_auto,
        "dropped": t.dropped,
        "encoded": {t.target: f"text classes as ids 0..{len(class_names) - 1} in sorted order"}
        if class_names
        else {},
    }
    return replace(src, columns_train=t.others, feature_names=t.features, facts=facts)


def _hf_load_disk(path: str | Path) -> Any:
    try:
        import datasets as hf_datasets
    except ImportError:
        raise DataError(
            f"reading the Hugging Face dataset folder {path} needs the datasets "
            'package: pip install "retain[hf]"'
        ) from None
    try:
        return hf_datasets.load_from_disk(str(path))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot load the saved dataset ({e})") from None


def _hf_images(ds: Any, col: str) -> np.ndarray:
    try:
        return np.asarray(ds.with_format("numpy")[col])
    except ValueError:  # mixed modes (L and RGB) do not stack: bring every image to RGB
        arrays = [np.asarray(im.convert("RGB")) for im in ds[col]]
        if len({a.shape for a in arrays}) > 1:
            raise DataError(f"images in column '{col}' differ in size; resize them first") from None
        return np.stack(arrays)


def _hf_numeric(feat: Any) -> bool:
    kind = type(feat).__name__
    return kind == "ClassLabel" or (
        kind == "Value" and feat.dtype.startswith(("int", "uint", "float", "bool"))
    )


def _token_ids(feat: Any) -> bool:
    """A sequence of integers (``input_ids``): token ids, which an embedding looks up by index."""
    inner = getattr(feat, "feature", None)
    return (
        type(feat).__name__ in ("List", "Sequence", "LargeList")
        and type(inner).__name__ == "Value"
        and inner.dtype.startswith(("int", "uint"))
    )


def _hf_columns(ds: Any, used: list[str], where: str, mapped: bool | None) -> torch.Tensor:
    """Numeric columns as one float32 matrix, read from the (memory-mapped) Arrow table batch by
    batch into a matrix that is itself memory-mapped when large (see :mod:`retain.data.mapped`):
    no whole column is ever copied to float64."""
    x = empty_rows(len(ds), len(used), mapped)
    start = 0
    for batch in ds.select_columns(used).with_format("arrow").iter(batch_size=65536):
        block = x[start : start + batch.num_rows]
        for j, c in enumerate(used):
            v = batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
            check_block(Path(where), c, v, start)
            block[:, j] = torch.from_numpy(v.astype(np.float32))
        start += batch.num_rows
    return x


def _hf_split(
    ds: Any, input: str | None, target: str, where: str, mapped: bool | None = None
) -> tuple[torch.Tensor, np.ndarray, dict[str, np.ndarray], list[str]]:
    """Inputs, raw targets, the other scalar columns, and the input column names of one split."""
    cols, feats, table = ds.column_names, ds.features, ds.with_format("numpy")
    if target not in cols:
        raise _no_column(where, "target", target, cols)
    scalar = [c for c in cols if type(feats[c]).__name__ in ("Value", "ClassLabel")]
    if input is None:
        used = [c for c in scalar if c != target and _hf_numeric(feats[c])]
        if not used:
            raise DataError(f"{where}: no numeric input columns; choose one with stream.input")
        x = _hf_columns(ds, used, where, mapped)
    elif input not in cols:
        raise _no_column(where, "input", input, cols)
    else:
        used = [input]
        if _token_ids(feats[input]):
            # Token ids stay integers: cast to float they crash the model's embedding lookup.
            seqs = ds[input]
            if len({len(r) for r in seqs}) > 1:
                raise DataError(
                    f"{where}: the token sequences in '{input}' differ in length; pack them into "
                    "blocks with stream.scenario text (which reads input_ids as tokens)"
                )
            extra = {c: np.asarray(table[c]) for c in scalar if c not in (target, input)}
            ids = torch.tensor(seqs, dtype=torch.long)
            return ids, np.asarray(table[target]), extra, used
        a = _hf_images(ds, input)
        image = a.ndim >= 3 or type(feats[input]).__name__ == "Image"
        if image:
            x = as_images(a)
        else:
            # A copy: an Arrow-backed array may be read-only memory that splits reorder in place.
            x = torch.from_numpy(np.array(a, dtype=np.float32).reshape(len(a), -1))
    extra = {c: np.asarray(table[c]) for c in scalar if c not in (target, input)}
    return x, np.asarray(table[target]), extra, used


def from_hf(
    data: Any,
    input: str | None = None,
    target: str | None = None,
    objective: str = "auto",
    name: str = "hf",
    mapped: bool | None = None,
) -> Source:
    """A Source from a Hugging Face ``Dataset``, ``DatasetDict`` or ``save_to_disk`` folder.

    A ``DatasetDict`` gives its ``train`` split and, when present, its ``test`` split. The target
    defaults to ``label`` (else ``labels``/``y``/``target``); the input to ``image``/``img``/
    ``pixels``/``x``, else every other numeric column. Images become float32 ``[N, C, H, W]``.

    Examples:
        >>> src = from_hf("saved/mnist", target="label")  # doctest: +SKIP
    """
    if isinstance(data, (str, Path)):
        name = name if name != "hf" else dataset_name(Path(data))
        data = _hf_load_disk(data)
    train, test = data, None
    if isinstance(data, dict):
        if "train" not in data:
            raise DataError(
                f"{name}: the DatasetDict has no 'train' split (splits: {', '.join(data)})"
            )
        train, test = data["train"], data.get("test")
    if not hasattr(train, "column_names") or not hasattr(train, "__len__"):
        raise DataError(f"{name}: expected a datasets.Dataset, got {type(train).__name__}")
    cols = train.column_names
    auto = target is None
    target = _pick_target(name, target, cols)
    input = input or next((c for c in _INPUT_NAMES if c in cols and c != target), None)
    x, y, extra, used = _hf_split(train, input, target, name, mapped)
    xt = yt = None
    extra_t: dict[str, np.ndarray] = {}
    if test is not None:
        xt, yt, extra_t, _ = _hf_split(test, input, target, f"{name} (test)", mapped)
    ys, class_names = _class_ids([y] + ([yt] if test is not None else []), objective, name, target)
    feat = train.features[target]
    if type(feat).__name__ == "ClassLabel":
        class_names = list(feat.names)
    src = from_arrays(
        x,
        ys[0],
        xt,
        ys[1] if test is not None else None,
        objective=objective,
        name=name,
        class_names=class_names,
    )
    if not x.is_floating_point():  # token ids (see _hf_split): from_arrays made them floats
        src = replace(src, x_train=x, x_test=xt)
    image = x.ndim >= 4
    why = "not numeric" if input is None else f"not the input column '{input}'"
    dropped = {c: why for c in cols if c != target and c not in used}
    encoded = (
        {target: f"text classes as ids 0..{len(class_names) - 1} in sorted order"}
        if class_names and type(feat).__name__ != "ClassLabel"
        else {}
    )
    facts = {"target": target, "target_auto": auto, "dropped": dropped, "encoded": encoded}
    if type(feat).__name__ == "ClassLabel":
        facts["label_ids"] = True  # integer labels; the names only display them
    return replace(
        src,
        columns_train=extra,
        columns_test=extra_t,
        is_image=image,
        feature_names=None if image or input else used,
        facts=facts,
    )


def read_file(
    path: str | Path,
    target: str | None = None,
    features: list[str] | None = None,
    objective: str = "auto",
    input: str | None = None,
    mapped: bool | None = None,
) -> Source:
    """A Source from a data file or folder; the reader is chosen from the name and contents.

    ``mapped``: keep the inputs of a table or HF dataset in a memory-mapped file (``None``: when
    they would take more than half the available memory; see :mod:`retain.data.mapped`).

    Examples:
        >>> src = read_file("flights.parquet", target="delayed")  # doctest: +SKIP
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data file '{path}' not found (looked for {p.absolute()})")
    low = p.name.lower()
    if p.is_dir():
        if any((p / m).is_file() for m in _HF_MARKERS):
            return from_hf(
                p,
                input=input,
                target=target,
                objective=objective,
                name=dataset_name(p),
                mapped=mapped,
            )
        if is_cifar_folder(p):
            return read_cifar10(p)
        if find_idx_files(p) is not None:
            return read_idx_folder(p, name=dataset_name(p))
        raise DataError(f"{path}: a folder with no data retain can read; supported: {SUPPORTED}")
    if low.endswith((".csv", ".csv.gz", ".parquet", ".pq")):
        return read_table(p, target, features, objective, mapped=mapped)
    if low.endswith(".npz"):
        return read_npz(p, objective)
    if low.endswith((".pkl.gz", ".pkl")):
        return mnist_pkl_source(p, name=dataset_name(p))
    if low.endswith((".tar.gz", ".tgz", ".tar")):
        return read_cifar10(p)
    if "-ubyte" in low:
        return read_idx_folder(p.parent, name=dataset_name(p.parent))
    raise DataError(f"{path}: unsupported file type; supported: {SUPPORTED}")
