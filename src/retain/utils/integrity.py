"""Checks of what a run directory holds, before anything in it is used.

Everything a resume reads back (``retain.json``, ``checkpoints/LATEST.json``, a checkpoint's
``state.json`` and safetensors files) is checked here for type, shape and consistency: a file cut
short, garbled or edited by hand is refused in one line naming it (:class:`Damaged`), rather than
failing later with a traceback or, worse, giving a run that looks complete with rows missing.

A checkpoint folder (``checkpoints/task-000k``) holds ``state.json`` (everything that is not a
tensor) and safetensors files. ``state.json`` lists every file written before it with its size
(``files``), and its tensor skeletons (``strategies``, ``rng``, ``optimizer``) refer to tensors
by key in the file :data:`SKELETONS` names; :func:`check_checkpoint` checks all of it without
loading a tensor. A new kind of checkpoint content: write its files into the checkpoint folder
before ``state.json`` (their sizes are then checked), add a skeleton saved with ``save_state``
to :data:`SKELETONS`, and the checks of new ``state.json`` keys to :func:`check_state`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from retain.errors import RunDirError
from retain.utils.files import write_atomic

# The checkpoint format (state.json's ``schema_version``).
SCHEMA_VERSION = 1

# The marker every run directory carries: its kind and the format of its layout.
MARKER = "retain.json"
FORMAT = 1
KINDS = ("run", "seeds", "compare")

# state.json key -> the safetensors file holding the tensors its skeleton refers to.
SKELETONS = {
    "strategies": "strategies.safetensors",
    "rng": "rng.safetensors",
    "optimizer": "optimizer.safetensors",
}

# A checkpoint folder's name: no path separators, no leading dot (temporary names start with one).
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class Damaged(RunDirError):
    """A file of a run directory that cannot be used as it is: ``path`` names it, ``reason``
    says what is wrong, the message also what to do."""

    def __init__(self, path: str | Path, reason: str, fix: str = "") -> None:
        self.path, self.reason = Path(path), reason
        fix = fix or "restore it, or start a new run with another --out"
        super().__init__(f"'{path}' cannot be used ({reason}); {fix}")

    def with_fix(self, fix: str) -> Damaged:
        return Damaged(self.path, self.reason, fix)


@dataclass(frozen=True)
class Expect:
    """What a checkpoint must fit to be resumed by this run (``None``: not checked).

    ``n_tasks``: the plan's tasks (``tasks_done`` is at most this); ``n_eval``: scores per row of
    R (the stream's tasks); ``n_strategies``: states in ``strategies``; ``metric``: the score each
    row holds."""

    n_tasks: int | None = None
    n_eval: int | None = None
    n_strategies: int | None = None
    metric: str | None = None


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _name(v: Any) -> str:
    return type(v).__name__


def read_json(path: str | Path) -> Any:
    """The parsed JSON file at ``path``; unreadable or invalid JSON is :class:`Damaged`."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
        return json.loads(text)
    except UnicodeDecodeError:
        raise Damaged(path, "not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise Damaged(path, f"not valid JSON: {e.msg} at line {e.lineno}") from None
    except OSError as e:
        raise Damaged(path, f"cannot be read: {e.strerror or e}") from None


# ---------------------------------------------------------------------- the marker


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    """``folder/retain.json`` checked (kind and format), or ``None`` when there is none."""
    path = Path(folder) / MARKER
    if not path.exists():
        return None
    fix = (
        'rewrite it as {"kind": "run", "format": 1} (or "seeds", "compare": what the folder '
        "holds), or choose another --out"
    )
    data = read_json_fixed(path, fix)
    if not isinstance(data, dict):
        raise Damaged(path, f"a JSON object expected, got {_name(data)}", fix)
    fmt = data.get("format")
    if not _int(fmt) or fmt < 1:
        raise Damaged(path, f"format must be a whole number >= 1, got {fmt!r}", fix)
    if fmt > FORMAT:
        raise RunDirError(
            f"'{path.parent}' was written by a newer retain (run directory format {fmt}; this "
            f"retain reads up to {FORMAT}): upgrade retain to use it"
        )
    if data.get("kind") not in KINDS:
        raise Damaged(
            path, f"kind must be one of {', '.join(KINDS)}, got {data.get('kind')!r}", fix
        )
    return data


def read_json_fixed(path: Path, fix: str) -> Any:
    try:
        return read_json(path)
    except Damaged as e:
        raise e.with_fix(fix) from None


def write_marker(folder: str | Path, kind: str) -> None:
    """Mark ``folder`` as a retain directory of ``kind`` (``run``, ``seeds`` or ``compare``)."""
    try:
        version = metadata.version("retain")
    except metadata.PackageNotFoundError:
        version = None
    body = {"kind": kind, "format": FORMAT, "retain_version": version}
    write_atomic(Path(folder) / MARKER, json.dumps(body, indent=1) + "\n")


# ---------------------------------------------------------------------- checkpoints


def check_latest(path: Path) -> tuple[int, str]:
    """``(tasks_done, folder name)`` from ``checkpoints/LATEST.json``."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise Damaged(path, f"a JSON object expected, got {_name(data)}")
    n, name = data.get("tasks_done"), data.get("dir")
    if not _int(n) or n < 0:
        raise Damaged(path, f"tasks_done must be a whole number >= 0, got {n!r}")
    if not isinstance(name, str) or not NAME.match(name):
        raise Damaged(path, f"dir must name a checkpoint folder, got {name!r}")
    return n, name


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Every tensor's shape in a safetensors file, from its header (no tensor is loaded); a file
    cut short or garbled is :class:`Damaged` (safetensors checks that the header's offsets cover
    the file exactly)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise Damaged(path, "missing") from None
    except Exception as e:  # SafetensorError (not importable by name), OSError
        raise Damaged(path, f"not a readable safetensors file: {str(e).splitlines()[0]}") from None


def check_state(
    meta: Any, path: Path, expect: Expect = Expect(), tasks_done: int | None = None
) -> None:
    """``state.json`` of a checkpoint: its version, and the history it holds consistent with
    itself (rows of R = finished tasks + 1), with ``LATEST.json`` and with ``expect``."""
    if not isinstance(meta, dict):
        raise Damaged(path, f"a JSON object expected, got {_name(meta)}")
    version = meta.get("schema_version", 1)
    if not _int(version) or version < 1:
        raise Damaged(path, f"schema_version must be a whole number >= 1, got {version!r}")
    if version > SCHEMA_VERSION:
        raise RunDirError(
            f"'{path}' was written by a newer retain (checkpoint version {version}; this retain "
            f"reads up to {SCHEMA_VERSION}): upgrade retain to resume it"
        )
    n = meta.get("tasks_done")
    if not _int(n) or n < 0:
        raise Damaged(path, f"tasks_done must be a whole number >= 0, got {n!r}")
    if tasks_done is not None and n != tasks_done:
        raise Damaged(path, f"tasks_done is {n}, but checkpoints/LATEST.json says {tasks_done}")
    if expect.n_tasks is not None and n > expect.n_tasks:
        raise Damaged(path, f"tasks_done is {n}, but this run trains {expect.n_tasks} task(s)")
    rows = _list(meta, "rows", path, n + 1, "rows of scores (one before training, one per task)")
    for i, row in enumerate(rows):
        _check_row(row, i, path, expect)
    fits = _list(meta, "fits", path, n, "per-task training records")
    for i, fit in enumerate(fits):
        if not isinstance(fit, dict) or not _int(fit.get("steps")) or fit["steps"] < 0:
            raise Damaged(path, f"fits[{i}] must be an object with a whole number of steps")
    params = _list(meta, "params", path, n, "parameter counts")
    if not all(_int(p) and p >= 0 for p in params):
        raise Damaged(path, "params must be whole numbers")
    offset = meta.get("schedule_offset")
    if offset != sum(f["steps"] for f in fits) or not _int(offset):
        raise Damaged(path, f"schedule_offset {offset!r} is not the sum of the tasks' steps")
    if not isinstance(meta.get("started"), str):
        raise Damaged(path, "started must be a time (a string)")
    if "strategy_stats" in meta:
        _list(meta, "strategy_stats", path, n, "per-task strategy statistics")
    if meta.get("suites"):  # older checkpoints have none
        _list(meta, "suites", path, n + 1, "per-row suite scores")
    states = _list(meta, "strategies", path, expect.n_strategies, "strategy states")
    if not all(isinstance(s, dict) for s in states):
        raise Damaged(path, "every strategy state must be an object")
    if not isinstance(meta.get("rng"), dict):
        raise Damaged(path, f"rng must be an object, got {_name(meta.get('rng'))}")
    opt = meta.get("optimizer")
    if opt is not None and not isinstance(opt, dict):
        raise Damaged(path, f"optimizer must be an object or null, got {_name(opt)}")
    files = meta.get("files", {})
    if not isinstance(files, dict) or not all(_int(v) for v in files.values()):
        raise Damaged(path, "files must map file names to their sizes in bytes")


def _list(meta: dict[str, Any], key: str, path: Path, n: int | None, what: str) -> list[Any]:
    value = meta.get(key)
    if not isinstance(value, list):
        raise Damaged(path, f"{key} must be a list of {what}, got {_name(value)}")
    if n is not None and len(value) != n:
        raise Damaged(path, f"{key} holds {len(value)} {what}, expected {n}")
    return value


def _check_row(row: Any, i: int, path: Path, expect: Expect) -> None:
    if not isinstance(row, list) or not all(isinstance(c, dict) for c in row):
        raise Damaged(path, f"rows[{i}] must be a list of score objects")
    if expect.n_eval is not None and len(row) != expect.n_eval:
        raise Damaged(
            path, f"rows[{i}] holds {len(row)} scores, but the stream has {expect.n_eval} tasks"
        )
    for j, cell in enumerate(row):
        if expect.metric is not None and not _number(cell.get(expect.metric)):
            raise Damaged(
                path,
                f"rows[{i}][{j}].{expect.metric} must be a finite number, got "
                f"{cell.get(expect.metric)!r}",
            )


def _refs(obj: Any, path: Path, key: str, out: set[str]) -> None:
    """Collect the tensor keys a skeleton refers to; a malformed skeleton is :class:`Damaged`
    (see ``retain.utils.state.flatten`` for its form)."""
    if isinstance(obj, list):
        for v in obj:
            _refs(v, path, key, out)
    elif isinstance(obj, dict):
        tags = [
            k
            for k in ("__tensor__", "__ndarray__", "__tuple__", "__dict__", "__float__")
            if k in obj
        ]
        if not tags:
            for v in obj.values():
                _refs(v, path, key, out)
            return
        value = obj[tags[0]]
        if tags[0] in ("__tensor__", "__ndarray__"):
            if not isinstance(value, str):
                raise Damaged(path, f"{key}: a tensor reference must be a string")
            out.add(value)
        elif tags[0] == "__tuple__":
            if not isinstance(value, list):
                raise Damaged(path, f"{key}: a tuple must be a list")
            _refs(value, path, key, out)
        elif tags[0] == "__dict__":
            if not isinstance(value, list) or not all(
                isinstance(p, list) and len(p) == 2 for p in value
            ):
                raise Damaged(path, f"{key}: a mapping must be a list of [key, value] pairs")
            _refs(value, path, key, out)
        else:
            if value not in ("nan", "inf", "-inf"):
                raise Damaged(path, f"{key}: {value!r} is not a non-finite number")


def check_checkpoint(
    folder: Path, expect: Expect = Expect(), tasks_done: int | None = None
) -> dict[str, Any]:
    """A checkpoint folder's ``state.json`` (tensors not loaded), once everything in the folder
    checks: the state itself, each file's recorded size, each safetensors file's header, and
    every tensor the skeletons refer to."""
    state = folder / "state.json"
    if not folder.is_dir():
        raise Damaged(folder, "missing")
    if not state.is_file():
        raise Damaged(state, "missing: the checkpoint was not finished")
    meta = read_json(state)
    check_state(meta, state, expect, tasks_done)
    for name, size in meta.get("files", {}).items():
        f = folder / name
        if not NAME.match(name) or not f.is_file():
            raise Damaged(f, "missing")
        if f.stat().st_size != size:
            raise Damaged(f, f"{f.stat().st_size} bytes, {size} when it was written")
    tensor_shapes(folder / "model.safetensors")
    for key, file in SKELETONS.items():
        if meta.get(key) is None:
            continue
        keys = set(tensor_shapes(folder / file))
        wanted: set[str] = set()
        _refs(meta[key], state, key, wanted)
        if wanted - keys:
            raise Damaged(
                folder / file, f"tensor {sorted(wanted - keys)[0]!r} of {key} is not in it"
            )
    return meta


def check_loaded(meta: dict[str, Any], folder: Path) -> None:
    """What the loaded skeletons must be for the run to use them: the random states' shapes
    (``retain.utils.state.set_rng_state``) and the optimizer's layout."""
    import numpy as np
    import torch

    rng, where = meta["rng"], folder / "rng.safetensors"
    t = rng.get("torch")
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 1:
        raise Damaged(where, "the torch random state must be a 1-D uint8 tensor")
    np_state = rng.get("numpy")
    if (
        not isinstance(np_state, list)
        or len(np_state) != 5
        or not isinstance(np_state[1], np.ndarray)
        or np_state[1].shape != (624,)
    ):
        raise Damaged(where, "the numpy random state must be MT19937's 624 words and 3 numbers")
    py = rng.get("python")
    if (
        not isinstance(py, tuple)
        or len(py) != 3
        or not isinstance(py[1], tuple)
        or (len(py[1]) != 625 or not all(_int(v) for v in py[1]))
    ):
        raise Damaged(where, "the Python random state must be (version, 625 words, gauss)")
    opt = meta.get("optimizer")
    if opt is not None and (
        not isinstance(opt.get("state"), dict)
        or not isinstance(opt.get("param_groups"), list)
        or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) for g in opt["param_groups"]
        )
    ):
        raise Damaged(
            folder / "optimizer.safetensors",
            "the optimizer state is not laid out as retain writes it",
        )


def check_weights(model: Any, path: Path) -> None:
    """The weights in ``path`` have the model's shapes (a mismatch would otherwise fail inside
    ``load_state_dict`` with a traceback)."""
    own = {k: list(v.shape) for k, v in model.state_dict().items()}
    for k, shape in sorted(tensor_shapes(Path(path)).items()):
        if k in own and own[k] != shape:
            raise RunDirError(
                f"checkpoint '{path}' does not fit the model ({k} is {shape} there, {own[k]} in "
                "the model); resume with the config the run was started with"
            )
