"""Bad data files: each is refused in one line naming the problem, before anything trains, and
the file (and whatever else is on disk) is left byte-identical."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from refusal import put, refused

HEAD = "a,b,label\n"
ROWS = "".join(f"{i % 7 / 7:.3f},{i % 5 / 5:.3f},{i % 2}\n" for i in range(40))
CONFIG = """\
seed: 0
stream: {STREAM}
model: {name: mlp, hidden: [8]}
train: {epochs: 1, batch_size: 16}
output: {plots: false}
"""


def _parquet(tmp_path, name, table):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / name
    pq.write_table(pa.table(table), p)
    return p


def _rows(change):
    lines = ROWS.splitlines(keepends=True)
    return "".join(change(i, line) for i, line in enumerate(lines))


def _cell(i, line, col, value, at=5):
    if i != at:
        return line
    cells = line.rstrip("\n").split(",")
    cells[col] = value
    return ",".join(cells) + "\n"


# (file content, extra stream keys, words the error line must hold)
ONE_FILE = {
    "empty file": ("", "", "empty"),
    "header only": (HEAD, "", "header but no rows"),
    "no header row": (ROWS, "", "header row naming the columns"),
    "ragged row": (HEAD + ROWS + "0.1,0.2\n", "", "has 2 cells but the header has 3"),
    "non-numeric cell": (HEAD + _rows(lambda i, r: _cell(i, r, 0, "abc")), "", "'abc'"),
    "non-numeric cell late": (
        HEAD + _rows(lambda i, r: _cell(i, r, 1, "n/a!", at=39)),
        "",
        "'n/a!'",
    ),
    "text cell in integer labels": (
        HEAD + _rows(lambda i, r: _cell(i, r, 2, "two")),
        "",
        "column 'label' holds numbers",
    ),
    "negative label": (HEAD + _rows(lambda i, r: _cell(i, r, 2, "-1")), "", "is negative"),
    "labels -1 and 1": (
        HEAD + _rows(lambda i, r: _cell(i, r, 2, "-1", at=i if r.endswith("0\n") else -1)),
        "",
        "class label -1 is negative",
    ),
    "float label as classes": (
        HEAD + _rows(lambda i, r: _cell(i, r, 2, "1.5")),
        ", objective: classification",
        "whole numbers",
    ),
    "stray huge label": (
        HEAD + _rows(lambda i, r: _cell(i, r, 2, "999999")),
        "",
        "1000000-way output layer",
    ),
    "infinite feature": (HEAD + _rows(lambda i, r: _cell(i, r, 0, "inf")), "", "infinite"),
    "feature beyond float32": (
        HEAD + _rows(lambda i, r: _cell(i, r, 1, "1e39")),
        "",
        "beyond float32's range",
    ),
    "missing feature": (HEAD + _rows(lambda i, r: _cell(i, r, 0, "")), "", "missing values"),
    "missing label": (
        HEAD + _rows(lambda i, r: _cell(i, r, 2, "")),
        "",
        "target column 'label' has 1 missing",
    ),
    "semicolons": (HEAD.replace(",", ";") + ROWS.replace(",", ";"), "", "separated by ';'"),
    "tabs": (HEAD.replace(",", "\t") + ROWS.replace(",", "\t"), "", "separated by '\\t'"),
    "repeated column name": ("a,a,label\n" + ROWS, "", "repeats the column name(s) a"),
    "unknown target": (HEAD + ROWS, ", target: lable", "no target column 'lable'"),
    "unknown feature": (HEAD + ROWS, ", features: [a, c]", "no feature column 'c'"),
    "text feature named": (
        "a,city,label\n" + "".join(f"{i},x{i % 3},{i % 2}\n" for i in range(20)),
        ", features: [a, city]",
        "feature column 'city' is not numeric",
    ),
    "only text features": (
        "city,label\n" + "".join(f"x{i % 3},{i % 2}\n" for i in range(20)),
        "",
        "no numeric feature columns",
    ),
    "no target named label": (
        "a,b,c\n" + ROWS,
        "",
        "say which column to predict",
    ),
    "utf-16 file": (
        (HEAD + ROWS).encode("utf-16"),
        "",
        "cannot read the CSV",
    ),
    "binary bytes": (bytes(range(256)) * 4, "", "cannot read the CSV"),
}


@pytest.mark.parametrize("case", list(ONE_FILE))
def test_bad_csv_is_refused(tmp_path, capsys, case):
    content, extra, needle = ONE_FILE[case]
    data = put(tmp_path, "data.csv", content)
    cfg = put(tmp_path, "c.yaml", CONFIG.replace("{STREAM}", f"{{dataset: data.csv{extra}}}"))
    refused(capsys, ["run", str(cfg), "--out", str(tmp_path / "out")], needle, keep=[data, cfg])
    assert not (tmp_path / "out").exists()


def test_gz_that_is_not_gzip(tmp_path, capsys):
    data = put(tmp_path, "data.csv.gz", HEAD + ROWS)
    cfg = put(tmp_path, "c.yaml", CONFIG.replace("{STREAM}", "{dataset: data.csv.gz}"))
    refused(capsys, ["run", str(cfg), "--out", str(tmp_path / "o")], "cannot read", keep=[data])


def test_gzipped_csv_without_header(tmp_path, capsys):
    data = put(tmp_path, "data.csv.gz", gzip.compress(ROWS.encode()))
    cfg = put(tmp_path, "c.yaml", CONFIG.replace("{STREAM}", "{dataset: data.csv.gz}"))
    refused(capsys, ["run", str(cfg), "--out", str(tmp_path / "o")], "header row", keep=[data])


PARQUET = {
    "string feature named": (
        {"a": [1.0, 2.0] * 10, "s": ["x", "y"] * 10, "label": [0, 1] * 10},
        ", features: [a, s]",
        "feature column 's' is not numeric",
    ),
    "infinite feature": (
        {"a": [1.0, np.inf] * 10, "label": [0, 1] * 10},
        "",
        "infinite",
    ),
    "null feature": ({"a": [1.0, None] * 10, "label": [0, 1] * 10}, "", "missing values"),
}


@pytest.mark.parametrize("case", list(PARQUET))
def test_bad_parquet_is_refused(tmp_path, capsys, case):
    table, extra, needle = PARQUET[case]
    data = _parquet(tmp_path, "data.parquet", table)
    stream = f"{{dataset: data.parquet{extra}}}"
    cfg = put(tmp_path, "c.yaml", CONFIG.replace("{STREAM}", stream))
    refused(capsys, ["run", str(cfg), "--out", str(tmp_path / "out")], needle, keep=[data, cfg])


def test_parquet_that_is_not_parquet(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    data = put(tmp_path, "data.parquet", HEAD + ROWS)
    cfg = put(tmp_path, "c.yaml", CONFIG.replace("{STREAM}", "{dataset: data.parquet}"))
    refused(capsys, ["run", str(cfg), "--out", str(tmp_path / "o")], "Parquet", keep=[data])


TEXT = "a,b,label\n" + "".join(f"{i / 9:.2f},{i % 4},{['no', 'yes'][i % 2]}\n" for i in range(30))
FILES = {
    "text labels and integers": (
        [TEXT, HEAD + ROWS],
        "",
        "has text labels (no, yes) but 'd2' has integer labels",
    ),
    "classification and regression": (
        [HEAD + ROWS, HEAD + ROWS.replace(",0\n", ",0.5\n").replace(",1\n", ",1.5\n")],
        "",
        "has regression targets",
    ),
    "different columns": (
        [HEAD + ROWS, "a,b,c,label\n" + "".join(f"1,2,3,{i % 2}\n" for i in range(20))],
        "",
        "has the feature columns a, b, c but 'd1' has a, b",
    ),
    "columns in another order": (
        [HEAD + ROWS, "b,a,label\n" + ROWS],
        "",
        "same columns in the same order",
    ),
    "task_il where every file has the same classes": (
        [HEAD + ROWS, HEAD + ROWS],
        ", setting: task_il",
        "nothing would be masked",
    ),
    "domain_il while names bring new classes": (
        [TEXT, TEXT.replace("yes", "maybe")],
        ", labels: names, setting: domain_il",
        "brings classes no earlier file has",
    ),
    "unknown label mode": ([HEAD + ROWS, HEAD + ROWS], ", labels: by_name", "labels"),
}


@pytest.mark.parametrize("case", list(FILES))
def test_bad_files_are_refused(tmp_path, capsys, case):
    contents, extra, needle = FILES[case]
    paths = [put(tmp_path, f"d{i + 1}.csv", c) for i, c in enumerate(contents)]
    stream = f"{{scenario: files, files: [d1.csv, d2.csv]{extra}}}"
    cfg = put(tmp_path, "c.yaml", CONFIG.replace("{STREAM}", stream))
    refused(capsys, ["run", str(cfg), "--out", str(tmp_path / "out")], needle, keep=[*paths, cfg])


def test_init_on_a_csv_without_header(tmp_path, capsys):
    data = put(tmp_path, "data.csv", ROWS)
    refused(capsys, ["init", str(data)], "header row naming the columns", keep=[tmp_path])
