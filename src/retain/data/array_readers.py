"""Readers for array files: IDX, pickled numpy arrays (``mnist.pkl.gz``, CIFAR batches), ``.npz``.

Re-exported by :mod:`retain.data.readers`, which also reads tables and Hugging Face datasets and
picks a reader for a path. Nothing from a user file is ever unpickled in the unsafe sense: pickles
go through :func:`safe_load_pickle`, which builds numpy arrays, lists, dicts, numbers and strings
only.
"""

from __future__ import annotations

import codecs
import gzip
import pickle
import struct
import tarfile
import zlib
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from retain.data.sources import Source, from_arrays
from retain.errors import DataError

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_ROLES = {
    "x_train": ("train", "images", 3),
    "y_train": ("train", "labels", 1),
    "x_test": ("t10k", "images", 3),
    "y_test": ("t10k", "labels", 1),
}


def dataset_name(path: Path) -> str:
    """A dataset name from a file or folder name: ``mnist.pkl.gz`` -> ``mnist``."""
    name = path.name
    for suffix in (".gz", ".tar", ".tgz", ".pkl", ".npz", ".csv", ".parquet", ".pq"):
        name = name.removesuffix(suffix)
    return name or "data"


def _read_bytes(path: str | Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic (whatever its name)."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: not a valid gzip file ({e})") from None
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``*-idx3-ubyte`` images, ``*-idx1-ubyte`` labels), gzipped or raw.

    Examples:
        >>> x = read_idx("train-images-idx3-ubyte.gz")  # doctest: +SKIP
        >>> x.shape, x.dtype  # doctest: +SKIP
        ((60000, 28, 28), dtype('uint8'))
    """
    data = _read_bytes(path)
    if len(data) < 4 or data[0] or data[1] or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise DataError(f"{path}: not an IDX file (bad magic number 0x{data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: IDX header truncated ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{path}: IDX header says shape {tuple(dims)} ({expected} bytes) "
            f"but the file has {len(data)} bytes"
        )
    # frombuffer is a zero-copy view of read-only bytes; astype gives a writable, native-order copy.
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def find_idx_files(folder: str | Path) -> dict[str, Path] | None:
    """The four MNIST-style IDX files in ``folder`` (``.gz`` or raw), or None if any is missing."""
    folder, found = Path(folder), {}
    for role, (split, kind, n) in _IDX_ROLES.items():
        for sep in ("-", "."):  # some mirrors name them train-images.idx3-ubyte
            for ext in (".gz", ""):
                p = folder / f"{split}-{kind}{sep}idx{n}-ubyte{ext}"
                if p.is_file() and role not in found:
                    found[role] = p
    return found if len(found) == 4 else None


def as_images(a: np.ndarray) -> torch.Tensor:
    """float32 ``[N, C, H, W]`` in [0, 1] (uint8 scaled) from ``[N, H, W]``, NHWC or NCHW."""
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[-1] in (1, 3, 4) and a.shape[1] not in (1, 3, 4):
        a = a.transpose(0, 3, 1, 2)
    out = np.array(a, dtype=np.float32, order="C")
    if a.dtype == np.uint8:
        out /= 255.0
    return torch.from_numpy(out)


def _image_source(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray | None,
    y_test: np.ndarray | None,
    name: str,
    class_names: list[str] | None = None,
) -> Source:
    xt = as_images(x_test) if x_test is not None else None
    yt = torch.from_numpy(np.asarray(y_test, dtype=np.int64)) if y_test is not None else None
    return Source(
        as_images(x),
        torch.from_numpy(np.asarray(y, dtype=np.int64)),
        xt,
        yt,
        class_names=class_names,
        name=name,
        is_image=True,
        facts={"label_ids": True} if class_names else {},
    )


def read_idx_folder(
    folder: str | Path, name: str = "idx", class_names: list[str] | None = None
) -> Source:
    """An image Source from the four MNIST-style IDX files in ``folder`` (official train/test)."""
    files = find_idx_files(folder)
    if files is None:
        raise DataError(
            f"{folder}: expected train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz"
            ", t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (or unzipped)"
        )
    a = {role: read_idx(p) for role, p in files.items()}
    for split in ("train", "test"):
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"{folder}: {split} images have shape {x.shape} and labels {y.shape}; "
                "expected [N, H, W] images and N labels"
            )
    return _image_source(a["x_train"], a["y_train"], a["x_test"], a["y_test"], name, class_names)


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Pickles of bytes written at protocol 2 call _codecs.encode(text, "latin1"); only that codec is
    # let through, so a pickle cannot make us run an arbitrary (e.g. decompressing) codec.
    try:
        latin1 = codecs.lookup(encoding).name == "iso8859-1"
    except LookupError:
        latin1 = False
    if not latin1:
        raise DataError(f"retain refuses to unpickle _codecs.encode with encoding '{encoding}'")
    return codecs.encode(obj, "latin1", errors)


def _numpy_allowed() -> dict[tuple[str, str], Any]:
    try:  # numpy 2 renamed numpy.core to numpy._core; importing numpy.core there warns.
        from numpy._core import multiarray, numeric
    except ImportError:
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed = {
        ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy._core.multiarray", "scalar"): multiarray.scalar,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    if hasattr(numeric, "_frombuffer"):  # what protocol-5 pickles of arrays call
        allowed[("numpy._core.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _SafeUnpickler(pickle.Unpickler):
    """An Unpickler that can only build numpy arrays and plain Python containers.

    Why this is safe: a pickle runs code only through globals it names (GLOBAL/STACK_GLOBAL, which
    go through ``find_class``) and then calls (REDUCE, NEWOBJ, BUILD). Every name outside the
    allowlist is refused, so the only callables a pickle can reach are: ``ndarray``/``dtype``
    constructors and ``ndarray.__setstate__`` (which copy raw bytes into a new array),
    ``_reconstruct`` (an empty array of a subtype, itself limited to ``ndarray``), ``scalar`` and
    ``_frombuffer`` (a value from raw bytes; numpy refuses raw bytes for object dtypes) and a
    latin-1-only ``codecs.encode``. Lists, dicts, tuples, strings and numbers need no globals.
    """

    def __init__(self, file: IO[bytes], encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._source = getattr(file, "name", "pickle")
        self._allowed = _numpy_allowed()

    def find_class(self, module: str, name: str) -> Any:
        key = (
            ("numpy._core" + module[len("numpy.core") :], name)
            if module.startswith("numpy.core.")
            else (module, name)
        )
        if key in self._allowed:
            return self._allowed[key]
        raise DataError(
            f"{self._source}: retain refuses to unpickle {module}.{name}; only numpy "
            "arrays, lists, dicts, numbers and strings are read from pickle files"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self._source}: retain refuses pickles with persistent ids")


def safe_load_pickle(fileobj: IO[bytes], encoding: str = "latin1") -> Any:
    """Unpickle numpy arrays and plain containers only; anything else raises DataError.

    ``encoding`` decodes Python 2 ``str`` objects: ``"latin1"`` (text) or ``"bytes"`` (keep bytes,
    as CIFAR batches need).

    Examples:
        >>> import io, pickle
        >>> safe_load_pickle(io.BytesIO(pickle.dumps({"a": np.arange(3)}, protocol=2)))
        {'a': array([0, 1, 2])}
    """
    src = getattr(fileobj, "name", "pickle")
    try:
        return _SafeUnpickler(fileobj, encoding).load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OSError,
        zlib.error,
    ) as e:
        raise DataError(f"{src}: cannot read the pickle ({type(e).__name__}: {e})") from None


def read_mnist_pkl(path: str | Path) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The splits of the classic ``mnist.pkl.gz``: ``(train, valid, test)``, each ``(x, y)``.

    x is float32 ``[N, 784]`` in [0, 1] and y int64. Train + valid are the official 60k training
    set, test the official 10k.
    """
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    with (gzip.open if gzipped else open)(path, "rb") as f:
        obj = safe_load_pickle(f, encoding="latin1")
    if not isinstance(obj, (tuple, list)) or len(obj) not in (2, 3):
        raise DataError(
            f"{path}: expected a pickle of (train, valid, test) splits, got {type(obj).__name__}"
        )
    splits = []
    for i, split in enumerate(obj):
        if not (isinstance(split, (tuple, list)) and len(split) == 2):
            raise DataError(f"{path}: split {i} is not an (x, y) pair")
        x, y = np.asarray(split[0]), np.asarray(split[1])
        if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"{path}: split {i} has x {x.shape} and y {y.shape}; expected x [N, D] and y [N]"
            )
        x = x / np.float32(255) if x.dtype == np.uint8 else x.astype(np.float32, copy=False)
        splits.append((x, y.astype(np.int64, copy=False)))
    return tuple(splits)


def _as_uint8(x: np.ndarray) -> np.ndarray:
    # The classic mnist.pkl.gz stores pixel k as k/256, not k/255 as the IDX files divided by 255
    # give; going back to k makes MNIST the same tensor whichever file it came from.
    # Pixels k/255 are almost never all multiples of 1/256, so a sample tells the two apart.
    k = x[:1000] * 256
    if 0 < float(x.max(initial=0)) <= 255 / 256 and k.any() and np.array_equal(k, np.rint(k)):
        return np.rint(x * 256).astype(np.uint8)
    return x


def mnist_pkl_source(
    path: str | Path, name: str = "mnist", class_names: list[str] | None = None
) -> Source:
    """A Source from an ``mnist.pkl.gz``-layout pickle: the last split is the test set."""
    splits = [(_as_uint8(x), y) for x, y in read_mnist_pkl(path)]
    x = np.concatenate([s[0] for s in splits[:-1]])
    y = np.concatenate([s[1] for s in splits[:-1]])
    xt, yt = splits[-1]
    side = round(float(np.sqrt(x.shape[1])))
    if side * side != x.shape[1]:  # not square images: plain feature vectors
        src = from_arrays(
            x, y, xt, yt, objective="classification", name=name, class_names=class_names
        )
        return replace(src, facts={"label_ids": True} if class_names else {})
    return _image_source(
        x.reshape(-1, side, side), y, xt.reshape(-1, side, side), yt, name, class_names
    )


def read_npz(path: str | Path, objective: str = "auto") -> Source:
    """A Source from ``.npz`` arrays: ``x_train, y_train[, x_test, y_test]`` (Keras) or ``x, y``.

    Inputs with 3 or more dimensions are images (uint8 is scaled to [0, 1]). An optional
    ``class_names`` array names the classes.
    """
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    with z:
        keys = set(z.files)
        try:
            if {"x_train", "y_train"} <= keys:
                x, y = z["x_train"], z["y_train"]
                xt, yt = None, None
                if {"x_test", "y_test"} <= keys:
                    xt, yt = z["x_test"], z["y_test"]
            elif {"x", "y"} <= keys:
                x, y, xt, yt = z["x"], z["y"], None, None
            else:
                raise DataError(
                    f"{path}: expected arrays x_train, y_train, x_test, y_test or "
                    f"x, y; found {', '.join(sorted(keys)) or 'none'}"
                )
            names = [str(n) for n in z["class_names"]] if "class_names" in keys else None
        except ValueError as e:  # object arrays need pickle, which we refuse
            raise DataError(f"{path}: {e}; save plain numeric arrays") from None
    image = x.ndim >= 3
    if image:
        x = as_images(x)
        xt = as_images(xt) if xt is not None else None
    src = from_arrays(
        x, y, xt, yt, objective=objective, name=dataset_name(Path(path)), class_names=names
    )
    return replace(src, is_image=image, facts={"label_ids": True} if names else {})


def _cifar_batches(path: Path) -> dict[str, Any]:
    """Unpickled CIFAR batch files, by base name, from a folder or a tar archive."""
    if path.is_dir():
        folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
        out = {}
        for p in sorted(folder.iterdir()):
            if p.name.startswith(("data_batch_", "test_batch", "batches.meta")):
                with open(p, "rb") as f:
                    out[p.name] = safe_load_pickle(f, encoding="bytes")
        return out
    try:
        with tarfile.open(path, "r:*") as tar:
            out = {}
            for m in tar.getmembers():  # read members in memory; nothing is extracted to disk
                base = Path(m.name).name
                if m.isfile() and base.startswith(("data_batch_", "test_batch", "batches.meta")):
                    out[base] = safe_load_pickle(tar.extractfile(m), encoding="bytes")
            return out
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable tar archive ({e})") from None


def _str_keys(d: Any, path: Path, name: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise DataError(f"{path}: {name} is not a CIFAR batch (a pickled dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def read_cifar10(path: str | Path) -> Source:
    """CIFAR-10 from ``cifar-10-python.tar.gz`` or the extracted ``cifar-10-batches-py`` folder.

    x is float32 ``[N, 3, 32, 32]`` in [0, 1]; the official 50k/10k split.
    """
    path = Path(path)
    batches = _cifar_batches(path)
    train_names = sorted(n for n in batches if n.startswith("data_batch_"))
    if not train_names or "test_batch" not in batches:
        raise DataError(f"{path}: no CIFAR-10 data_batch_* and test_batch files found")

    def arrays(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for n in names:
            b = _str_keys(batches[n], path, n)
            if "data" not in b or "labels" not in b:
                raise DataError(f"{path}: {n} lacks 'data' or 'labels'")
            x = np.asarray(b["data"], dtype=np.uint8)
            if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(b["labels"]):
                raise DataError(
                    f"{path}: {n} holds data {x.shape} and {len(b['labels'])} labels; "
                    "expected [N, 3072] and N"
                )
            xs.append(x.reshape(-1, 3, 32, 32))  # rows are 1024 red, 1024 green, 1024 blue
            ys.append(np.asarray(b["labels"], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    x, y = arrays(train_names)
    xt, yt = arrays(["test_batch"])
    names = None
    if "batches.meta" in batches:
        meta = _str_keys(batches["batches.meta"], path, "batches.meta")
        label_names = meta.get("label_names", [])
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in label_names]
    return _image_source(x, y, xt, yt, "cifar10", names or None)


def is_cifar_folder(p: Path) -> bool:
    """Whether ``p`` is an extracted CIFAR-10 folder (or holds ``cifar-10-batches-py``)."""
    return (p / "cifar-10-batches-py").is_dir() or (p / "data_batch_1").is_file()
