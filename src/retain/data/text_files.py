"""Text files read into documents (the rows scenario ``text`` tokenises): ``.txt`` files and
folders, JSONL/JSON, CSV, Parquet (each optionally gzipped) and Hugging Face ``datasets`` folders,
with the size and SHA-256 of every file read. See :mod:`retain.data.text` for the kinds of rows.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

from retain.config import TextSource
from retain.errors import DataError, did_you_mean

_HF_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
_SUFFIXES = {
    ".txt": "txt",
    ".text": "txt",
    ".md": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_fact(path: Path, data: bytes) -> dict[str, Any]:
    return {"file": str(path.absolute()), "bytes": len(data), "sha256": _sha256(data)}


def _suffix(p: Path) -> str:
    """The type suffix, looking through ``.gz`` (``en.txt.gz`` is a ``.txt``)."""
    return Path(p.stem).suffix.lower() if p.suffix.lower() == ".gz" else p.suffix.lower()


def _read_bytes(p: Path) -> tuple[bytes, dict[str, Any]]:
    """A file's contents (decompressed when gzipped) and its record (size and SHA-256 of the
    file as stored)."""
    raw = p.read_bytes()
    fact = _file_fact(p, raw)
    if p.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{p}: not a valid gzip file ({e})") from None
    return raw, fact


def _format(spec: TextSource) -> str:
    p = Path(spec.path).expanduser()
    if not p.exists():
        raise DataError(f"text source '{spec.path}' not found (looked for {p.absolute()})")
    if spec.format != "auto":
        return spec.format
    if p.is_dir():
        return "hf" if any((p / m).is_file() for m in _HF_MARKERS) else "txt"
    fmt = _SUFFIXES.get(_suffix(p))
    if fmt is None:
        raise DataError(
            f"{p}: unknown text file type '{_suffix(p)}'; use .txt, .jsonl, .json, .csv, .parquet "
            "(each optionally .gz) or an HF datasets folder, or set the source's format"
        )
    return fmt


def _decode(path: Path, data: bytes) -> str:
    if not data.strip():
        raise DataError(f"{path}: the file is empty; put text in it or remove it from the source")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            f"convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None


def _split_text(text: str, mode: str) -> list[str]:
    if mode == "file":
        return [text.strip()] if text.strip() else []
    if mode == "line":
        return [line.strip() for line in text.splitlines() if line.strip()]
    blocks, cur = [], []
    for line in text.splitlines():
        if line.strip():
            cur.append(line)
        elif cur:
            blocks.append("\n".join(cur))
            cur = []
    if cur:
        blocks.append("\n".join(cur))
    return blocks


def _read_txt(spec: TextSource, mode: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    p = Path(spec.path).expanduser()
    found = sorted(q for q in p.rglob("*") if q.is_file() and _SUFFIXES.get(_suffix(q)) == "txt")
    paths = found if p.is_dir() else [p]
    if not paths:
        raise DataError(f"{p}: the folder holds no .txt files")
    if mode == "auto":
        mode = "file" if p.is_dir() else "blank_line"
    rows, files = [], []
    for q in paths:
        data, fact = _read_bytes(q)
        files.append(fact)
        rows += [{"text": t, "_where": f"{q}"} for t in _split_text(_decode(q, data), mode)]
    return rows, files


def _read_rows(spec: TextSource, fmt: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of a JSONL/JSON/CSV/Parquet file or an HF datasets folder, each with ``_where``
    (file and line or row) for error messages."""
    p = Path(spec.path).expanduser()
    if fmt == "hf":
        return _read_hf(p)
    data, fact = _read_bytes(p)
    files = [fact]
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(pa.BufferReader(data)).to_pylist()
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise DataError(f"{p}: cannot read the Parquet file ({e})") from None
        return [{**r, "_where": f"{p} row {i + 1}"} for i, r in enumerate(table)], files
    text = _decode(p, data)
    if fmt == "csv":
        try:
            reader = csv.DictReader(text.splitlines())
            rows = [{**r, "_where": f"{p} row {i + 2}"} for i, r in enumerate(reader)]
        except csv.Error as e:
            raise DataError(f"{p}: cannot read the CSV ({e})") from None
        return rows, files
    if fmt == "json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{p}: not valid JSON ({e}); for one object per line use .jsonl"
            ) from None
        if not isinstance(items, list):
            raise DataError(f"{p}: the JSON file must hold a list of objects")
        return [_obj(r, f"{p} item {i + 1}") for i, r in enumerate(items)], files
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: line {i} is not valid JSON ({e.msg})") from None
        rows.append(_obj(obj, f"{p} line {i}"))
    return rows, files


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(f"{where} is not a JSON object (got {type(value).__name__})")
    return {**value, "_where": where}


def _read_hf(p: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    try:
        import datasets as hf_datasets
    except ImportError:
        raise DataError(
            f'reading {p} needs the datasets package: pip install "retain[hf]"'
        ) from None
    try:
        ds = hf_datasets.load_from_disk(str(p))
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: cannot load the saved dataset ({e})") from None
    parts = [(k, ds[k]) for k in ds] if isinstance(ds, dict) else [("", ds)]
    rows = []
    for split, part in parts:
        at = f"{p}{' split ' + split if split else ''} row"
        rows += [{**r, "_where": f"{at} {i + 1}"} for i, r in enumerate(part.to_list())]
    # The folder's identity: every file's path and contents (arrow files, their metadata).
    h = hashlib.sha256()
    size = 0
    for q in sorted(x for x in p.rglob("*") if x.is_file()):
        data = q.read_bytes()
        h.update(str(q.relative_to(p)).encode() + b"\0" + _sha256(data).encode())
        size += len(data)
    return rows, [{"file": str(p.absolute()), "bytes": size, "sha256": h.hexdigest()}]


def _kind(row: dict[str, Any], spec: TextSource, text_field: str) -> str:
    if spec.messages in row:
        return "chat"
    if spec.prompt in row and spec.response in row:
        return "prompt"
    if "input_ids" in row:
        return "tokens"
    if text_field in row:
        return "text"
    fields = [k for k in row if k != "_where"]
    raise DataError(
        f"{row['_where']} has no '{text_field}' field{did_you_mean(text_field, fields)} "
        f"(fields: {', '.join(fields) or 'none'}); set the source's field, or give "
        f"'{spec.messages}' (chat) or '{spec.prompt}'/'{spec.response}' (instructions)"
    )


def _need(row: dict[str, Any], key: str, kind: str) -> Any:
    if row.get(key) is None:
        fields = [k for k in row if k != "_where"]
        raise DataError(
            f"{row['_where']} has no '{key}' field, which {kind} rows need "
            f"(fields: {', '.join(fields) or 'none'})"
        )
    return row[key]


def read_source(spec: TextSource, text_field: str, documents: str) -> tuple[str, list, list]:
    """``(kind, rows, files)``: the rows of ``spec`` as documents, and the files read."""
    fmt = _format(spec)
    if fmt == "txt":
        rows, files = _read_txt(spec, spec.documents or documents)
        if spec.by_column or spec.label:
            what = "by_column" if spec.by_column else "label"
            raise DataError(f"{spec.path}: {what} needs rows with fields (JSONL, CSV, ...)")
    else:
        rows, files = _read_rows(spec, fmt)
    if not rows:
        raise DataError(f"{spec.path}: no documents in it")
    field_ = spec.field or text_field
    kind = _kind(rows[0], spec, field_)
    key = {"chat": spec.messages, "prompt": spec.prompt, "tokens": "input_ids", "text": field_}
    if spec.label and kind != "text":
        raise DataError(
            f"{rows[0]['_where']}: classification (label '{spec.label}') reads a text field, "
            f"and these are {kind} rows; give each row a '{field_}' field (or set the source's "
            "field)"
        )
    for r in rows:
        _need(r, key[kind], f"{kind} (like the first)")
        if kind == "prompt":
            _need(r, spec.response, "prompt")
        if spec.by_column:
            _need(r, spec.by_column, "by_column")
        if spec.label:
            _label(r, spec.label)
    return kind, rows, files


def _label(row: dict[str, Any], key: str) -> None:
    """A classification row's class: present and not empty."""
    _need(row, key, "classification")
    if str(row[key]).strip() == "":
        raise DataError(
            f"{row['_where']}: the label field '{key}' is empty; give every row its class, or "
            "remove the row"
        )
