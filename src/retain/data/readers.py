"""Readers that turn data files into :class:`~retain.data.sources.Source` objects.

Formats: CSV and Parquet tables, Hugging Face ``datasets`` (objects or ``save_to_disk`` folders),
and, from :mod:`retain.data.array_readers` (re-exported here), IDX (MNIST, Fashion-MNIST), the
classic ``mnist.pkl.gz``, NumPy ``.npz`` and CIFAR-10 python batches. :func:`read_file` picks the
reader from the path.
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
from retain.data.sources import Source, from_arrays
from retain.errors import DataError, did_you_mean

__all__ = [
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

TARGET_NAMES = ("label", "labels", "y", "target")
_INPUT_NAMES = ("image", "img", "pixels", "x")
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
MISSING = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None")
SUPPORTED = (
    ".csv, .csv.gz, .parquet, .pq, .npz, .pkl.gz (MNIST pickle), IDX files, "
    "cifar-10-python.tar.gz, or a Hugging Face datasets folder"
)


def _parse_column(arr: np.ndarray) -> np.ndarray:
    """int64 if all cells are integers, float64 if all non-missing cells are numbers, else str."""
    try:  # numpy's parsers accept surrounding spaces, so only text columns need stripping
        return arr.astype(np.int64)
    except (ValueError, OverflowError):
        pass
    arr = np.char.strip(arr)
    try:
        return np.where(np.isin(arr, MISSING), "nan", arr).astype(np.float64)
    except ValueError:
        return arr


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read the CSV ({e})") from None
    if not rows:
        raise DataError(f"{path}: the CSV is empty; it needs a header row")
    header = [h.strip() or f"Unnamed: {i}" for i, h in enumerate(rows[0])]
    if len(set(header)) != len(header):
        raise DataError(f"{path}: the header repeats a column name")
    for i, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise DataError(f"{path}: row {i} has {len(r)} cells but the header has {len(header)}")
    if len(rows) == 1:
        raise DataError(f"{path}: the CSV has a header but no rows")
    table = np.array(rows[1:], dtype=str)
    return {h: _parse_column(table[:, i]) for i, h in enumerate(header)}


def _read_parquet(path: Path) -> dict[str, np.ndarray]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f'reading {path} needs pyarrow: pip install "retain[tables]"') from None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot read the Parquet file ({e})") from None
    cols = {}
    for name, col in zip(table.column_names, table.columns):
        t = col.type
        if pa.types.is_dictionary(t):
            col, t = col.cast(t.value_type), t.value_type
        if (pa.types.is_integer(t) or pa.types.is_boolean(t)) and not col.null_count:
            cols[name] = col.to_numpy().astype(np.int64)
        elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
            cols[name] = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            cols[name] = np.asarray(["" if v is None else v for v in col.to_pylist()], dtype=str)
        else:
            cols[name] = np.asarray(col.to_pylist(), dtype=object)
    return cols


def _no_column(where: Any, kind: str, col: str, names: list[str]) -> DataError:
    return DataError(
        f"{where}: no {kind} column '{col}'{did_you_mean(col, names)}; columns: {', '.join(names)}"
    )


def _pick_target(where: Any, target: str | None, names: list[str]) -> str:
    target = target or next((n for n in TARGET_NAMES if n in names), None)
    if target is None:
        raise DataError(
            f"{where}: say which column to predict with stream.target=COLUMN "
            f"(columns: {', '.join(names)})"
        )
    if target not in names:
        raise _no_column(where, "target", target, names)
    return target


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


def _table_source(
    cols: dict[str, np.ndarray],
    path: Path,
    target: str | None,
    features: list[str] | None,
    objective: str,
) -> Source:
    names = list(cols)
    auto = target is None
    target = _pick_target(path, target, names)
    dropped: dict[str, str] = {}
    if features is None:
        # Text columns are not features unless named: they are what by_column splits on.
        features = [n for n in names if n != target and cols[n].dtype.kind in "iufb"]
        dropped = {n: "text" for n in names if n != target and n not in features}
        if not features:
            raise DataError(
                f"{path}: no numeric feature columns besides the target '{target}'; "
                "encode text columns as numbers and list them in stream.features"
            )
    else:
        dropped = {n: "not in stream.features" for n in names if n != target and n not in features}
    features = list(features)
    for f in features:
        if f not in cols:
            raise _no_column(path, "feature", f, names)
        c = cols[f]
        if c.dtype.kind not in "iufb":
            raise DataError(
                f"{path}: feature column '{f}' is not numeric (e.g. '{c[0]}'); drop it "
                "from stream.features or encode it as numbers"
            )
        if c.dtype.kind == "f" and np.isnan(c).any():
            raise DataError(
                f"{path}: feature column '{f}' has {int(np.isnan(c).sum())} missing "
                "values; fill them or drop those rows"
            )
    if target in features or not features:
        raise DataError(f"{path}: the features must be one or more columns other than the target")
    y = cols[target]
    if y.dtype.kind == "f" and np.isnan(y).any():
        raise DataError(
            f"{path}: target column '{target}' has {int(np.isnan(y).sum())} missing "
            "values; drop those rows"
        )
    if objective == "auto":
        objective = "regression" if y.dtype.kind == "f" else "classification"
    (y,), class_names = _class_ids([y], objective, path, target)
    x = np.stack([cols[f].astype(np.float32) for f in features], axis=1)
    src = from_arrays(x, y, objective=objective, name=dataset_name(path), class_names=class_names)
    columns = {n: c for n, c in cols.items() if n != target}
    facts = {
        "target": target,
        "target_auto": auto,
        "dropped": dropped,
        "encoded": {target: f"text classes as ids 0..{len(class_names) - 1} in sorted order"}
        if class_names
        else {},
    }
    return replace(src, columns_train=columns, feature_names=features, facts=facts)


def read_columns(path: str | Path) -> dict[str, np.ndarray]:
    """The columns of a CSV or Parquet table by name (int64, float64 with NaN for missing cells,
    or text), as :func:`read_table` parses them.

    Examples:
        >>> cols = read_columns("jan.csv")  # doctest: +SKIP
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data file '{path}' not found (looked for {path.absolute()})")
    if path.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet(path)
    if not path.name.lower().endswith((".csv", ".csv.gz")):
        raise DataError(f"{path}: not a .csv, .csv.gz or .parquet table")
    return _read_csv(path)


def read_table(
    path: str | Path, target: str | None, features: list[str] | None = None, objective: str = "auto"
) -> Source:
    """A Source from a CSV (header row required) or Parquet table; no test split.

    ``features`` defaults to every numeric column but the target; text columns are never silently
    turned into numbers. Every column but the target is kept in ``columns_train`` for ``by_column``
    scenarios. Text targets become class ids in sorted order, named by ``class_names``.

    Examples:
        >>> src = read_table("adult.csv", target="income")  # doctest: +SKIP
    """
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        cols = _read_parquet(path)
    else:
        cols = _read_csv(path)
    return _table_source(cols, path, target, features, objective)


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


def _hf_split(
    ds: Any, input: str | None, target: str, where: str
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
        x = torch.from_numpy(np.stack([np.asarray(table[c], dtype=np.float32) for c in used], 1))
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
            x = torch.from_numpy(np.asarray(a, dtype=np.float32).reshape(len(a), -1))
    extra = {c: np.asarray(table[c]) for c in scalar if c not in (target, input)}
    return x, np.asarray(table[target]), extra, used


def from_hf(
    data: Any,
    input: str | None = None,
    target: str | None = None,
    objective: str = "auto",
    name: str = "hf",
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
    x, y, extra, used = _hf_split(train, input, target, name)
    xt = yt = None
    extra_t: dict[str, np.ndarray] = {}
    if test is not None:
        xt, yt, extra_t, _ = _hf_split(test, input, target, f"{name} (test)")
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
) -> Source:
    """A Source from a data file or folder; the reader is chosen from the name and contents.

    Examples:
        >>> src = read_file("flights.parquet", target="delayed")  # doctest: +SKIP
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data file '{path}' not found (looked for {p.absolute()})")
    low = p.name.lower()
    if p.is_dir():
        if any((p / m).is_file() for m in _HF_MARKERS):
            return from_hf(p, input=input, target=target, objective=objective, name=dataset_name(p))
        if is_cifar_folder(p):
            return read_cifar10(p)
        if find_idx_files(p) is not None:
            return read_idx_folder(p, name=dataset_name(p))
        raise DataError(f"{path}: a folder with no data retain can read; supported: {SUPPORTED}")
    if low.endswith((".csv", ".csv.gz", ".parquet", ".pq")):
        return read_table(p, target, features, objective)
    if low.endswith(".npz"):
        return read_npz(p, objective)
    if low.endswith((".pkl.gz", ".pkl")):
        return mnist_pkl_source(p, name=dataset_name(p))
    if low.endswith((".tar.gz", ".tgz", ".tar")):
        return read_cifar10(p)
    if "-ubyte" in low:
        return read_idx_folder(p.parent, name=dataset_name(p.parent))
    raise DataError(f"{path}: unsupported file type; supported: {SUPPORTED}")
