"""CSV and Parquet tables read straight into a float32 feature matrix.

The features never exist as float64 columns of the whole table, nor as a table of strings: CSV is
parsed batch by batch by pyarrow (the ``tables`` extra; Python's ``csv`` module without it) and
Parquet is read batch by batch, each batch checked and written into one preallocated float32
matrix, so reading takes about the float32 data plus one batch. That matrix is in memory, or, for
data larger than memory, in a memory-mapped temporary file (:mod:`retain.data.mapped`) that the
loader pages in batch by batch.

Nothing is silently changed: a header row that looks like data, a cell that is not a number in a
column of numbers, an infinite value or one beyond float32's range are errors naming the row;
columns of text are kept as text (never turned into numbers), and missing values in a feature are
an error (see :func:`read_table_data`).
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retain.data.mapped import empty_rows
from retain.errors import DataError, did_you_mean

TARGET_NAMES = ("label", "labels", "y", "target")
MISSING = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None")
FLOAT32_MAX = float(np.finfo(np.float32).max)
_ROWS = 65536  # rows per batch (Parquet, the csv-module reader)
_CSV_BLOCK = 1 << 24  # bytes of CSV pyarrow parses per batch


@dataclass
class TableData:
    """A table read for training: the float32 features, the target, the other columns."""

    x: torch.Tensor  # float32 [rows, features]
    features: list[str]
    target: str
    target_auto: bool
    y: np.ndarray  # int64, float64 (NaN where missing) or str
    others: dict[str, np.ndarray] = field(default_factory=dict)  # typed like y
    dropped: dict[str, str] = field(default_factory=dict)


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _pyarrow() -> Any:
    try:
        import pyarrow

        return pyarrow
    except ImportError:
        return None


def _opener(path: Path) -> Any:
    if path.name.lower().endswith(".gz"):
        return lambda: io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return lambda: open(path, encoding="utf-8-sig", newline="")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_header(path: Path) -> list[str]:
    """The column names of a CSV file, checked: a header row must exist and name the columns."""
    try:
        with _opener(path)() as f:
            first = next((r for r in csv.reader(f) if r), None)
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as e:
        raise DataError(f"{path}: cannot read the CSV ({e})") from None
    if first is None:
        raise DataError(f"{path}: the CSV is empty; it needs a header row")
    header = [h.strip() or f"Unnamed: {i}" for i, h in enumerate(first)]
    if all(_is_number(h) for h in header):
        shown = ", ".join(header[:4]) + (", ..." if len(header) > 4 else "")
        raise DataError(
            f"{path}: the first row ({shown}) is numbers, not column names: the CSV needs a "
            "header row naming the columns, e.g. x1,x2,label"
        )
    if len(header) == 1:
        for sep in (";", "\t", "|"):
            if sep in first[0]:
                raise DataError(
                    f"{path}: the header is one column '{first[0][:60]}': retain reads "
                    f"comma-separated values and this file looks separated by {sep!r}; "
                    "convert it to commas"
                )
    if len(set(header)) != len(header):
        twice = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"{path}: the header repeats the column name(s) {', '.join(twice)}")
    return header


def parse_text_column(path: Path, name: str, cells: np.ndarray) -> np.ndarray:
    """A column read as text: int64 when every filled cell is an integer, float64 (NaN where
    missing) when every filled cell is a number, text when most cells are not numbers.

    A column of numbers with a few cells that are not (``1.5, abc, 2.3``) is an error naming the
    first such cell: dropping the column, or the rows, would silently change the data.
    """
    cells = np.char.strip(cells.astype(str))
    missing = np.isin(cells, MISSING)
    if not missing.any():
        try:
            return cells.astype(np.int64)
        except (ValueError, OverflowError):
            pass
    filled = cells[~missing]
    try:
        out = np.full(len(cells), np.nan)
        out[~missing] = filled.astype(np.float64)
        return out
    except ValueError:
        pass
    uniq, inverse = np.unique(filled, return_inverse=True)
    numeric = np.array([_is_number(u) for u in uniq], dtype=bool)[inverse]
    if numeric.mean() >= 0.5:
        row = int(np.flatnonzero(~missing)[np.argmin(numeric)])
        raise DataError(
            f"{path}: column '{name}' holds numbers but its line {row + 2} holds "
            f"'{cells[row][:40]}'; correct that cell (or remove it: a missing cell is empty)"
        )
    return cells


def check_block(path: Path, name: str, v: np.ndarray, start: int) -> None:
    """Values beyond float32's range (or infinite) in a feature column are refused."""
    bad = ~(np.abs(v) <= FLOAT32_MAX) & ~np.isnan(v)
    if bad.any():
        row = start + int(np.argmax(bad))
        raise DataError(
            f"{path}: feature column '{name}' holds {v[row - start]:g} at line {row + 2}, "
            f"infinite or beyond float32's range (±{FLOAT32_MAX:.2e}); correct or rescale it"
        )


def _arrow_error(path: Path, e: Exception, names: list[str]) -> DataError:
    text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    m = re.search(r"column #(\d+).*?invalid value '([^']*)'", text)
    if m and int(m.group(1)) < len(names):
        name = names[int(m.group(1))]
        return DataError(
            f"{path}: column '{name}' holds numbers but also '{m.group(2)[:40]}'; correct that "
            "cell (or remove it: a missing cell is empty)"
        )
    m = re.search(r"Expected (\d+) columns, got (\d+)", text)
    if m:
        return DataError(
            f"{path}: a row has {m.group(2)} cells but the header has {m.group(1)} ({text})"
        )
    return DataError(f"{path}: cannot read the CSV ({text})")


def _schema_csv(path: Path, header: list[str]) -> dict[str, bool]:
    """Per column: numeric in the first rows (pyarrow's inference on its first block)."""
    pa = _pyarrow()
    from pyarrow import csv as pacsv

    try:
        reader = pacsv.open_csv(
            path,
            read_options=_read_options(header, 1 << 20),
            convert_options=_convert_options({}),
        )
    except (pa.ArrowException, OSError) as e:
        raise _arrow_error(path, e, header) from None
    schema = reader.schema
    reader.close()
    kinds = {}
    for f in schema:
        t = f.type
        kinds[f.name] = pa.types.is_integer(t) or pa.types.is_floating(t)
    return kinds


def _read_options(header: list[str], block: int = _CSV_BLOCK) -> Any:
    from pyarrow import csv as pacsv

    return pacsv.ReadOptions(column_names=header, skip_rows=1, block_size=block, encoding="utf-8")


def _convert_options(types: dict[str, Any]) -> Any:
    from pyarrow import csv as pacsv

    return pacsv.ConvertOptions(
        column_types=types, null_values=list(MISSING), strings_can_be_null=False
    )


def _csv_batches_arrow(
    path: Path, header: list[str], numeric: list[str]
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of the CSV: ``numeric`` columns as float64 (NaN where missing), others as text."""
    pa = _pyarrow()
    from pyarrow import csv as pacsv

    types = {n: (pa.float64() if n in numeric else pa.string()) for n in header}
    try:
        reader = pacsv.open_csv(
            path, read_options=_read_options(header), convert_options=_convert_options(types)
        )
        for batch in reader:
            out = {}
            for name, col in zip(batch.schema.names, batch.columns):
                # Text stays an Arrow array until the whole column is known (see _typed).
                out[name] = col.to_numpy(zero_copy_only=False) if name in numeric else col
            yield out
    except (pa.ArrowException, OSError) as e:
        raise _arrow_error(path, e, header) from None


def _csv_batches_python(
    path: Path, header: list[str], numeric: list[str]
) -> Iterator[dict[str, np.ndarray]]:
    """The same batches with Python's ``csv`` module (when pyarrow is not installed)."""
    try:
        with _opener(path)() as f:
            rows = csv.reader(f)
            next(r for r in rows if r)
            line = 1
            while True:
                chunk = []
                for r in rows:
                    line += 1
                    if not r:
                        continue
                    if len(r) != len(header):
                        raise DataError(
                            f"{path}: a row has {len(r)} cells but the header has "
                            f"{len(header)} (line {line})"
                        )
                    chunk.append(r)
                    if len(chunk) == _ROWS:
                        break
                if not chunk:
                    return
                cells = np.array(chunk, dtype=str)
                out = {}
                for i, name in enumerate(header):
                    col = cells[:, i]
                    if name in numeric:
                        parsed = parse_text_column(path, name, col)
                        if parsed.dtype.kind not in "iuf":
                            first = next(c for c in col if not _is_number(c.strip()))
                            raise DataError(
                                f"{path}: column '{name}' holds numbers but also "
                                f"'{first.strip()[:40]}'; correct that cell (or remove it: a "
                                "missing cell is empty)"
                            )
                        out[name] = parsed.astype(np.float64)
                    else:
                        out[name] = col
                yield out
                if len(chunk) < _ROWS:
                    return
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read the CSV ({e})") from None


def _schema_python(path: Path, header: list[str]) -> dict[str, bool]:
    """Per column: numeric in the first rows (as pyarrow infers from its first block)."""
    first = next(_csv_batches_python(path, header, []), None)
    if first is None:
        return dict.fromkeys(header, False)
    return {n: parse_text_column(path, n, c).dtype.kind in "iuf" for n, c in first.items()}


def _parquet_file(path: Path) -> Any:
    pa = _pyarrow()
    if pa is None:
        raise DataError(f'reading {path} needs pyarrow: pip install "retain[tables]"')
    import pyarrow.parquet as pq

    try:
        # Without pre-buffering, pyarrow reads one column chunk at a time instead of whole row
        # groups ahead: reading peaks near the float32 data instead of several times it.
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot read the Parquet file ({e})") from None


def _schema_parquet(pf: Any) -> dict[str, bool]:
    pa = _pyarrow()
    kinds = {}
    for f in pf.schema_arrow:
        t = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
        kinds[f.name] = (
            pa.types.is_integer(t)
            or pa.types.is_floating(t)
            or pa.types.is_decimal(t)
            or pa.types.is_boolean(t)
        )
    return kinds


def _parquet_batches(
    path: Path, pf: Any, names: list[str], numeric: list[str]
) -> Iterator[dict[str, np.ndarray]]:
    pa = _pyarrow()
    try:
        for batch in pf.iter_batches(batch_size=_ROWS):
            out = {}
            for name, col in zip(batch.schema.names, batch.columns):
                t = col.type
                if pa.types.is_dictionary(t):
                    col, t = col.cast(t.value_type), t.value_type
                if name in numeric:
                    out[name] = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
                elif pa.types.is_string(t) or pa.types.is_large_string(t):
                    out[name] = np.asarray(["" if v is None else v for v in col.to_pylist()])
                elif (pa.types.is_integer(t) or pa.types.is_boolean(t)) and not col.null_count:
                    out[name] = col.to_numpy(zero_copy_only=False).astype(np.int64)
                elif pa.types.is_integer(t) or pa.types.is_floating(t):
                    out[name] = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
                else:
                    out[name] = np.asarray(col.to_pylist(), dtype=object)
            yield out
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot read the Parquet file ({e})") from None


def _source(path: Path, engine: str | None) -> tuple[list[str], dict[str, bool], Any]:
    """Column names, which are numeric, and ``batches(numeric)``."""
    if is_parquet(path):
        pf = _parquet_file(path)
        kinds = _schema_parquet(pf)
        names = list(kinds)
        return names, kinds, lambda numeric: _parquet_batches(path, pf, names, numeric)
    header = csv_header(path)
    use_arrow = (engine or ("pyarrow" if _pyarrow() is not None else "python")) == "pyarrow"
    if use_arrow:
        kinds = _schema_csv(path, header)
        return header, kinds, lambda numeric: _csv_batches_arrow(path, header, numeric)
    kinds = _schema_python(path, header)
    return header, kinds, lambda numeric: _csv_batches_python(path, header, numeric)


def no_column(where: Any, kind: str, col: str, names: list[str]) -> DataError:
    return DataError(
        f"{where}: no {kind} column '{col}'{did_you_mean(col, names)}; columns: {', '.join(names)}"
    )


def pick_target(where: Any, target: str | None, names: list[str]) -> str:
    target = target or next((n for n in TARGET_NAMES if n in names), None)
    if target is None:
        raise DataError(
            f"{where}: say which column to predict with stream.target=COLUMN "
            f"(columns: {', '.join(names)})"
        )
    if target not in names:
        raise no_column(where, "target", target, names)
    return target


def _join(parts: list[np.ndarray]) -> np.ndarray:
    if not parts:
        return np.array([], dtype=str)
    if any(p.dtype.kind in "USO" for p in parts) and not all(p.dtype.kind in "US" for p in parts):
        return np.concatenate([p.astype(object) for p in parts])
    return np.concatenate(parts)


def _arrow_typed(path: Path, name: str, parts: list[Any]) -> np.ndarray:
    """A text column read by pyarrow: parsed by Arrow's casts when it holds integers or numbers
    (fast), else by :func:`parse_text_column`."""
    pa = _pyarrow()
    import pyarrow.compute as pc

    col = pc.utf8_trim_whitespace(pa.chunked_array(parts, type=pa.string()))
    missing = pc.is_in(col, value_set=pa.array(MISSING))
    try:
        if not pc.any(missing).as_py():
            return pc.cast(col, pa.int64()).to_numpy()
        nulls = pa.nulls(len(col), pa.string())
        return pc.cast(pc.if_else(missing, nulls, col), pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    return parse_text_column(path, name, np.array(col.to_pylist(), dtype=str))


def _typed(path: Path, name: str, parts: list[Any]) -> np.ndarray:
    if parts and not isinstance(parts[0], np.ndarray):
        return _arrow_typed(path, name, parts)
    col = _join(parts)
    if col.dtype.kind in "US":
        return parse_text_column(path, name, col)
    return col


def read_columns(path: Path, engine: str | None = None) -> dict[str, np.ndarray]:
    """Every column of a table, typed: int64, float64 (NaN for missing cells) or text."""
    names, kinds, batches = _source(path, engine)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for b in batches([]):
        for n in names:
            parts[n].append(b[n])
    if not parts[names[0]] or not sum(len(p) for p in parts[names[0]]):
        raise DataError(f"{path}: the table has a header but no rows")
    return {n: _typed(path, n, parts[n]) for n in names}


def read_table_data(
    path: Path,
    target: str | None,
    features: list[str] | None,
    mapped: bool | None = None,
    engine: str | None = None,
) -> TableData:
    """The table at ``path`` (CSV or Parquet) read for training (see the module docstring).

    ``features`` defaults to every numeric column but the target; text columns are kept as text
    in ``others``, never turned into numbers. ``mapped``: put the features in a memory-mapped
    file (``None``: when they would take more than half the available memory). ``engine``:
    ``pyarrow`` or ``python`` for CSV (default: pyarrow when installed).
    """
    names, kinds, batches = _source(path, engine)
    auto = target is None
    target = pick_target(path, target, names)
    if features is not None:
        for f in features:
            if f not in names:
                raise no_column(path, "feature", f, names)
        if target in features or not features:
            raise DataError(
                f"{path}: the features must be one or more columns other than the target"
            )
    candidates = list(features) if features is not None else names
    numeric = [n for n in candidates if n != target and kinds[n]]
    blocks: list[np.ndarray] = []  # float32 [rows, len(numeric)] per batch
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names if n not in numeric}
    rows = 0
    for b in batches(numeric):
        block = np.empty((len(b[target]), len(numeric)), dtype=np.float32)
        for j, n in enumerate(numeric):
            check_block(path, n, b[n], rows)
            block[:, j] = b[n]
        blocks.append(block)
        for n in parts:
            parts[n].append(b[n])
        rows += len(block)
    if rows == 0:
        raise DataError(f"{path}: the table has a header but no rows")
    others = {n: _typed(path, n, p) for n, p in parts.items()}
    y = others.pop(target)
    late = [n for n in others if others[n].dtype.kind in "iuf" and n in candidates]
    used = [n for n in names if n in numeric or n in late]
    if features is not None:
        bad = [f for f in features if f not in used]
        if bad:
            c = others[bad[0]]
            example = next((v for v in c if str(v).strip() not in MISSING), c[0])
            raise DataError(
                f"{path}: feature column '{bad[0]}' is not numeric (e.g. '{example}'); drop it "
                "from stream.features or encode it as numbers"
            )
        used = list(features)
    if not used:
        raise DataError(
            f"{path}: no numeric feature columns besides the target '{target}'; "
            "encode text columns as numbers and list them in stream.features"
        )
    x = empty_rows(rows, len(used), mapped)
    start = 0
    while blocks:  # each batch is freed once copied: reading peaks near one float32 copy
        block = blocks.pop(0)
        cols = [used.index(n) for n in numeric]
        xs = x[start : start + len(block)]
        xs[:, cols] = torch.from_numpy(block)
        start += len(block)
    for n in late:
        v = others.pop(n).astype(np.float64)
        check_block(path, n, v, 0)
        x[:, used.index(n)] = torch.from_numpy(v.astype(np.float32))
    _check_missing(path, x, used)
    if features is None:
        dropped = {n: "text" for n in others}
    else:
        dropped = {n: "not in stream.features" for n in others}
    return TableData(x, used, target, auto, y, others, dropped)


def _check_missing(path: Path, x: torch.Tensor, names: list[str]) -> None:
    counts = torch.zeros(x.shape[1], dtype=torch.long)
    for start in range(0, len(x), _ROWS):
        counts += torch.isnan(x[start : start + _ROWS]).sum(0)
    if counts.any():
        j = int(torch.argmax((counts > 0).int()))
        raise DataError(
            f"{path}: feature column '{names[j]}' has {int(counts[j])} missing "
            "values; fill them or drop those rows"
        )
