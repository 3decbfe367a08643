"""Model packages: a trained model with everything a later update and its gate need.

A package is a folder of JSON and safetensors files (nothing pickled; readable with ``json`` and
``safetensors`` alone, see docs/packages.md)::

    package.json              format name and version, the tasks, scores, fingerprints, history
    config.resolved.yaml      the run's config (model, strategies, training settings)
    checkpoints/LATEST.json   a run checkpoint at a task boundary: weights, strategy state
    checkpoints/task-000k/    (Fisher and anchors, replay buffer, ...), optimizer state when kept,
                              the random state and the history of R; what ``retain run --resume``
                              reads, so an update is "resume with one more task"
    heldout/task-00j.safetensors   task j's held-out data as the model sees it (standardised):
                              ``test.x``, ``test.y`` and, with a validation split, ``val.x``/``val.y``
    suites.safetensors        the evaluation suites' data (``<suite>/x``, ``<suite>/y``)
    standardize.safetensors   the standardisation statistics (``x_mean``, ``x_std``, ``y_mean``,
                              ``y_std``) reused for every later batch of data
    fingerprints.safetensors  each task's fingerprint sample (``<j>/sample``); the rest of each
                              fingerprint is in package.json
    model/                    transformers models only: ``save_pretrained``
    verdict.json              packages made by ``retain update``: what changed, and the gate
    search.png                ``retain update --strategy auto`` with plots on: the trials' trade-off

A package is written under a temporary name and renamed when complete: an interrupted write
leaves no half package, and an existing package is never written into.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from retain.config import RunConfig, load_config
from retain.data.stream import Task, TensorData
from retain.errors import ConfigError, RunDirError
from retain.eval.drift import Fingerprint
from retain.utils.checkpoint import RunDir
from retain.utils.files import remove_stale_temps, write_atomic
from retain.utils.integrity import Damaged
from retain.utils.state import load_tensors, save_tensors, write_json

FORMAT = "retain-package"
VERSION = 1


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Package:
    """A package on disk: its folder and ``package.json``."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> Package:
        """Read ``path/package.json`` and check its format; one-line errors for a missing
        package, another format, or a newer version than this retain reads."""
        p = Path(path)
        meta_path = p / "package.json"
        if not meta_path.is_file():
            raise ConfigError(
                f"no model package at '{p}' (no package.json); make one with "
                "'retain train CONFIG --out PKG' or 'retain package RUN_DIR --out PKG'"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"'{meta_path}' is not valid JSON ({e})") from None
        if meta.get("format") != FORMAT:
            raise ConfigError(
                f"'{p}' is not a retain model package (format {meta.get('format')!r})"
            )
        version = meta.get("format_version")
        if not isinstance(version, int) or version > VERSION:
            raise ConfigError(
                f"package '{p}' has format version {version}, newer than this retain reads "
                f"({VERSION}); upgrade retain (pip install -U retain)"
            )
        return cls(p, meta)

    @property
    def config(self) -> RunConfig:
        return load_config(self.path / "config.resolved.yaml")

    @property
    def tasks(self) -> list[dict[str, Any]]:
        return self.meta["tasks"]

    @property
    def task_names(self) -> list[str]:
        return [t["name"] for t in self.tasks]

    def checkpoint(self) -> dict[str, Any]:
        """The saved run state (tensors loaded), as ``RunDir.load_checkpoint`` returns it."""
        try:
            saved = RunDir(self.path).load_checkpoint()
        except Damaged as e:
            raise ConfigError(
                f"package '{self.path}': '{e.path}' cannot be used ({e.reason}); the package is "
                "damaged: restore it from a copy, or make it again"
            ) from None
        except (RunDirError, OSError, KeyError, ValueError) as e:
            raise ConfigError(
                f"package '{self.path}': its checkpoint cannot be read ({e})"
            ) from None
        if saved is None:
            raise ConfigError(f"package '{self.path}' has no checkpoint (checkpoints/LATEST.json)")
        return saved

    def heldout(self) -> list[Task]:
        """Each task with its held-out data; ``train`` is a stand-in (the held-out data itself):
        a package holds no training data, and an update trains on the new task only."""
        out = []
        for t in self.tasks:
            parts = load_tensors(self.path / t["heldout"])
            test = TensorData(x=parts["test.x"], y=parts["test.y"])
            val = TensorData(x=parts["val.x"], y=parts["val.y"]) if "val.x" in parts else None
            classes = tuple(t["classes"]) if t.get("classes") is not None else None
            out.append(Task(t["name"], test, test, val, classes, t.get("domain")))
        return out

    def suites(self) -> dict[str, TensorData]:
        names = self.meta.get("suites", {}).get("names", [])
        if not names:
            return {}
        parts = load_tensors(self.path / "suites.safetensors")
        return {n: TensorData(x=parts[f"{n}/x"], y=parts[f"{n}/y"]) for n in names}

    def scaler(self) -> dict[str, torch.Tensor] | None:
        if not self.meta.get("standardized"):
            return None
        return load_tensors(self.path / "standardize.safetensors")

    def fingerprints(self) -> list[Fingerprint]:
        tensors = load_tensors(self.path / "fingerprints.safetensors")
        return [
            Fingerprint.from_parts(t["fingerprint"], {"sample": tensors[f"{j}/sample"]})
            if f"{j}/sample" in tensors
            else Fingerprint.from_parts(t["fingerprint"], {})
            for j, t in enumerate(self.tasks)
        ]

    def last_row(self) -> list[float | None]:
        return self.meta["scores"]["matrix"][-1]

    def last_suites(self) -> dict[str, dict[str, float]]:
        rows = self.meta.get("suites", {}).get("rows") or [{}]
        return rows[-1]


def scale(data: TensorData | None, scaler: dict[str, torch.Tensor] | None) -> TensorData | None:
    """``data`` standardised with a package's statistics, as
    :func:`retain.data.scenarios.standardize` scales a stream (the same arithmetic, so a batch
    scaled here is bit for bit what a run over the same files trains on)."""
    if data is None or scaler is None:
        return data
    t = {k: v for k, v in data.tensors.items() if k != "task"}
    t["x"] = (data.x.float() - scaler["x_mean"]) / scaler["x_std"]
    if "y_mean" in scaler:
        t["y"] = (data.y.float() - scaler["y_mean"]) / scaler["y_std"]
    return TensorData(**t)


def scaler_from(stats: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The statistics :func:`retain.data.scenarios.standardize` returns, as float32 tensors
    (its lists hold float32 values exactly)."""
    out = {
        "x_mean": torch.tensor(stats["x_mean"], dtype=torch.float32),
        "x_std": torch.tensor(stats["x_std"], dtype=torch.float32),
    }
    if "y_mean" in stats:
        out["y_mean"] = torch.tensor(stats["y_mean"], dtype=torch.float32)
        out["y_std"] = torch.tensor(stats["y_std"], dtype=torch.float32)
    return out


def source_of(path: str | Path) -> dict[str, Any]:
    """Where a batch of data came from: a file with its size and SHA-256, or a folder."""
    import hashlib

    p = Path(path).expanduser().absolute()
    if not p.is_file():
        return {"folder": str(p)}
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"file": str(p), "bytes": p.stat().st_size, "sha256": h.hexdigest()}


def _plain(d: TensorData) -> dict[str, torch.Tensor]:
    return {"x": d.x.contiguous(), "y": d.y.contiguous()}


@dataclass
class Contents:
    """What :func:`write` puts in a package besides ``meta`` (see the module docstring)."""

    config: RunConfig
    model: Any
    strategies_state: list[dict[str, Any]]
    history: dict[str, Any]
    tasks_done: int
    optimizer_state: dict[str, Any] | None
    rng: dict[str, Any]
    tasks: list[Task]
    suites: dict[str, TensorData]
    scaler: dict[str, torch.Tensor] | None
    fingerprints: list[Fingerprint]


def write(
    out: str | Path, meta: dict[str, Any], c: Contents, extra: dict[str, Any] | None = None
) -> Path:
    """Write a package to ``out`` (which must not exist): into a temporary folder beside it,
    renamed at the end. ``extra``: more files by name, JSON (``verdict.json``) or bytes
    (``search.png``)."""
    out = Path(out)
    check_new(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent, out.name)  # what a killed write of this package left
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        RunDir(tmp).save_checkpoint(
            c.tasks_done, c.model, c.strategies_state, c.history, c.optimizer_state, c.rng, keep=1
        )
        write_atomic(tmp / "config.resolved.yaml", c.config.to_yaml())
        (tmp / "heldout").mkdir()
        for j, (task, entry) in enumerate(zip(c.tasks, meta["tasks"])):
            entry["heldout"] = f"heldout/task-{j:03d}.safetensors"
            parts = {f"test.{k}": v for k, v in _plain(task.test).items()}
            if task.val is not None and len(task.val):
                parts.update({f"val.{k}": v for k, v in _plain(task.val).items()})
            save_tensors(tmp / entry["heldout"], parts)
        if c.suites:
            save_tensors(
                tmp / "suites.safetensors",
                {f"{n}/{k}": v for n, d in c.suites.items() for k, v in _plain(d).items()},
            )
        meta["standardized"] = c.scaler is not None
        if c.scaler is not None:
            save_tensors(tmp / "standardize.safetensors", c.scaler)
        fp = {}
        for j, (f, entry) in enumerate(zip(c.fingerprints, meta["tasks"])):
            entry["fingerprint"] = f.to_json()
            fp.update({f"{j}/{k}": v for k, v in f.tensors().items()})
        save_tensors(tmp / "fingerprints.safetensors", fp)
        meta["optimizer_state"] = c.optimizer_state is not None
        if callable(getattr(c.model, "save_pretrained", None)):
            from retain.utils.hf import save_model

            save_model(c.model, tmp / "model")
        for name, obj in (extra or {}).items():
            if isinstance(obj, bytes):  # a figure
                (tmp / name).write_bytes(obj)
            else:
                write_json(tmp / name, obj)
        write_json(tmp / "package.json", meta)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_new(out: Path) -> None:
    if out.exists():
        raise RunDirError(
            f"'{out}' already exists; choose another --out (a package is never overwritten)"
        )


def new_meta(base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fields every package.json starts with; ``base`` (a parent's) keeps its history."""
    from retain import __version__

    meta: dict[str, Any] = dict(base or {})
    meta.update(
        format=FORMAT,
        format_version=VERSION,
        id=uuid.uuid4().hex,
        parent=(base or {}).get("id"),
        created=now(),
        retain_version=__version__,
    )
    meta["history"] = list(meta.get("history", []))
    return meta
