"""Tables read into float32 without silent changes; label spaces across files; mapped data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from retain.cli import main
from retain.config import StreamConfig
from retain.data import scenarios as S
from retain.data.build import build_stream
from retain.data.mapped import is_mapped
from retain.data.readers import read_columns, read_table
from retain.data.sources import Source


def _table(path, n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) * [1, 100, 0.01]
    lines = ["\ufeffa, b ,c,city,score,label"]  # a BOM, spaces around a name
    for i in range(n):
        c = "" if i == 7 else f"{x[i, 2]:.6g}"  # a missing cell in a column no one trains on
        lines.append(f'{x[i, 0]:.7g},{x[i, 1]:.7g},{c},"Oslo, NO",{i % 9},{i % 3}')
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pyarrow_and_python_csv_readers_give_the_same_tensors(tmp_path):
    pytest.importorskip("pyarrow")
    p = _table(tmp_path / "t.csv")
    a = read_table(p, "label", ["a", "b", "score"], engine="pyarrow")
    b = read_table(p, "label", ["a", "b", "score"], engine="python")
    assert a.x_train.dtype == torch.float32 and a.x_train.shape == (300, 3)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert a.feature_names == b.feature_names == ["a", "b", "score"]
    for name in ("city", "c"):
        va, vb = a.columns_train[name], b.columns_train[name]
        assert va.dtype.kind == vb.dtype.kind
        assert np.array_equal(va, vb, equal_nan=va.dtype.kind == "f")
    assert a.columns_train["city"][0] == "Oslo, NO" and np.isnan(a.columns_train["c"][7])
    # float32 from the decimal text, as numpy's own parser rounds it
    text = (tmp_path / "t.csv").read_text().splitlines()[1].split(",")[:2]
    assert a.x_train[0, :2].tolist() == [np.float32(float(v)) for v in text]


def test_read_columns_types_each_column(tmp_path):
    p = _table(tmp_path / "t.csv", n=20)
    cols = read_columns(p)
    assert list(cols) == ["a", "b", "c", "city", "score", "label"]
    assert cols["label"].dtype == np.int64 and cols["a"].dtype == np.float64
    assert cols["city"].dtype.kind == "U"


def test_a_text_column_stays_text_and_is_recorded(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,city,label\n" + "".join(f"{i},x{i % 3},{i % 2}\n" for i in range(20)))
    src = read_table(p, None, None)
    assert src.feature_names == ["a"] and src.facts["dropped"] == {"city": "text"}
    assert src.columns_train["city"][:2].tolist() == ["x0", "x1"]


def _parquet(path, n):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    cols = {f"f{i}": x[:, i] for i in range(4)}
    cols["label"] = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    pq.write_table(pa.table(cols), path, row_group_size=97)  # several row groups and batches
    return path


def test_mapped_parquet_trains_on_the_same_stream_as_in_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("RETAIN_CACHE", str(tmp_path / "cache"))
    p = _parquet(tmp_path / "t.parquet", 1000)
    streams = {}
    for memory in ("ram", "mapped"):
        cfg = StreamConfig(dataset=str(p), scenario="iid", memory=memory)
        streams[memory], _ = build_stream(cfg, seed=3)
    ram, mapped = streams["ram"], streams["mapped"]
    assert not is_mapped(ram.tasks[0].train.x) and is_mapped(mapped.tasks[0].train.x)
    for a, b in zip(ram.tasks, mapped.tasks):
        for split in ("train", "test"):
            da, db = getattr(a, split), getattr(b, split)
            assert torch.equal(da.x, db.x) and torch.equal(da.y, db.y)
    # the temporary file is gone as soon as it is mapped: nothing is left on disk
    assert not any((tmp_path / "cache" / "mapped").iterdir())


def test_test_split_in_place_matches_the_copy():
    x = torch.arange(600, dtype=torch.float32).reshape(200, 3)
    src = Source(x.clone(), torch.arange(200) % 4)
    a = src.with_test_split(0.25, seed=5)
    b = Source(x.clone(), torch.arange(200) % 4).with_test_split(0.25, 5, in_place=True)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert torch.equal(src.x_train, x)  # the copying split leaves its source alone


def _named(name, names, seed):
    g = torch.Generator().manual_seed(seed)
    return Source(
        torch.randn(40, 3, generator=g),
        torch.arange(40) % len(names),
        class_names=names,
        name=name,
        facts={"label_ids": True},
    )


def test_label_ids_share_outputs_and_warn_when_names_differ():
    digits = _named("digits", ["0", "1", "2"], 0)
    clothes = _named("clothes", ["shirt", "shoe", "bag"], 1)
    warnings: list[str] = []
    s = S.from_sources([digits, clothes], warnings=warnings)
    assert s.n_outputs == 3 and s.setting == "domain_il"
    assert s.class_names == ("0 | shirt", "1 | shoe", "2 | bag")
    assert len(warnings) == 1 and "stream.labels: names" in warnings[0]


def test_label_names_give_each_class_its_own_output_and_allow_task_il():
    digits = _named("digits", ["0", "1", "2"], 0)
    clothes = _named("clothes", ["shirt", "shoe", "bag"], 1)
    s = S.from_sources([digits, clothes], labels="names")
    assert s.n_outputs == 6 and s.setting == "class_il"
    assert [t.classes for t in s.tasks] == [(0, 1, 2), (3, 4, 5)]
    assert int(s.tasks[1].train.y.min()) == 3
    t = S.from_sources([digits, clothes], labels="names", setting="task_il")
    mask = t.class_mask()
    assert mask is not None and mask.tolist() == [
        [True] * 3 + [False] * 3,
        [False] * 3 + [True] * 3,
    ]


def test_the_same_data_with_and_without_names_gets_the_same_outputs():
    a, b = _named("a", ["0", "1", "2"], 0), _named("b", ["x", "y", "z"], 1)
    plain = [Source(s.x_train, s.y_train, name=s.name) for s in (a, b)]
    named, unnamed = S.from_sources([a, b]), S.from_sources(plain)
    assert named.n_outputs == unnamed.n_outputs == 3 and named.setting == unnamed.setting


def test_a_file_bringing_new_classes_makes_the_stream_class_incremental():
    a = Source(torch.randn(30, 2), torch.arange(30) % 2, name="a")
    b = Source(torch.randn(30, 2), 2 + torch.arange(30) % 2, name="b")
    s = S.from_sources([a, b])
    assert s.setting == "class_il" and s.n_outputs == 4
    assert [t.classes for t in s.tasks] == [(0, 1), (2, 3)]


def test_data_warnings_reach_result_json(tmp_path, capsys):
    for name, classes in (("d1", ["0", "1"]), ("d2", ["cat", "dog"])):
        rng = np.random.default_rng(0)
        np.savez(
            tmp_path / f"{name}.npz",
            x=rng.normal(size=(40, 3)).astype(np.float32),
            y=np.arange(40) % 2,
            class_names=np.array(classes),
        )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "stream: {scenario: files, files: [d1.npz, d2.npz]}\n"
        "model: {name: mlp, hidden: [4]}\ntrain: {epochs: 1, batch_size: 16}\n"
        "output: {plots: false}\n"
    )
    assert main(["run", str(cfg), "--out", str(tmp_path / "out")]) == 0
    assert "name the same label ids differently" in capsys.readouterr().err
    record = json.loads((tmp_path / "out" / "result.json").read_text())
    assert any("name the same label ids differently" in w for w in record["warnings"])
    assert record["data"]["labels"] == "ids"


def test_iid_in_place_gives_the_same_tasks_and_standardises_each_row_once():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 4, generator=g) * 5 + 2, torch.arange(300) % 3
    copied = S.iid(Source(x.clone(), y.clone()).with_test_split(0.2, 1), n_tasks=3)
    grouped = S.iid(
        Source(x.clone(), y.clone()).with_test_split(0.2, 1, in_place=True),
        n_tasks=3,
        in_place=True,
    )
    for a, b in zip(copied.tasks, grouped.tasks):
        assert torch.equal(a.train.x, b.train.x) and torch.equal(a.train.y, b.train.y)
    ptrs = {t.train.x.untyped_storage().data_ptr() for t in grouped.tasks}
    assert len(ptrs) == 1  # views of one storage: no copy of the rows
    sa, _ = S.standardize(copied)
    sb, _ = S.standardize(grouped, in_place=True)
    for a, b in zip(sa.tasks, sb.tasks):
        assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.x, b.test.x)
