"""Run directories and per-task checkpoints.

Layout of a run directory::

    retain.json               what the folder is: {"kind": "run", "format": 1, "retain_version"}
    config.resolved.yaml      the full config (a run is reproducible from it alone)
    result.json               the source of truth, rewritten after every task (status: running,
                              then complete)
    metrics.csv  report.md  report.html  plots/*.png   renderings of result.json
    checkpoints/LATEST.json   {"tasks_done": k, "dir": "task-000k"}
    checkpoints/task-000k/    model.safetensors, strategies.safetensors, optimizer.safetensors,
                              rng.safetensors and state.json (everything that is not a tensor,
                              and the size of every file of the folder)
    checkpoints/step-000k-SSSSSSSSS/   inside task k, after its optimizer step S
                              (train.checkpoint_every; format in retain.midtask)

A checkpoint folder is written under a temporary name, flushed to the disk and renamed when
complete, and LATEST.json is replaced atomically after that, so a run killed at any moment leaves
the previous checkpoint intact; what a killed write leaves is removed on the next start. Loading
checks everything first (:mod:`retain.utils.integrity`). Nothing here is pickled, and loading
never unpickles.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from retain.errors import RunDirError
from retain.utils.files import atomic_folder, write_atomic
from retain.utils.integrity import (
    MARKER,
    NAME,
    SCHEMA_VERSION,
    SKELETONS,
    Damaged,
    Expect,
    check_checkpoint,
    check_latest,
    check_loaded,
    check_weights,
    read_marker,
    write_marker,
)
from retain.utils.state import load_state, save_state, write_json

__all__ = ["SCHEMA_VERSION", "RunDir", "is_main_process", "load_weights", "optimizer_state"]


def is_main_process() -> bool:
    """Rank 0 of a launch (``torchrun``/``accelerate launch`` set ``RANK``), or a single process.

    Read from the environment so the run directory can be checked before the accelerator (and
    its process group) exists: only the main process creates, checks and writes it."""
    return int(os.environ.get("RANK", "0")) == 0


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def ckpt_root(self) -> Path:
        return self.path / "checkpoints"

    def has_content(self) -> bool:
        """Whether the folder holds anything besides its marker (a run just started has it)."""
        return self.path.exists() and any(p.name != MARKER for p in self.path.iterdir())

    def ensure_new_or_resumable(self, resume: bool, kind: str = "run") -> None:
        """Make the folder for a new run (marked as a directory of ``kind``), or accept one to
        resume; what a resumed folder holds is checked by :mod:`retain.resume`."""
        if not is_main_process():
            return
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"run directory '{self.path}' is a file; choose another --out")
        fresh = not self.has_content()
        if not fresh and not resume:
            raise RunDirError(
                f"run directory '{self.path}' already exists; pass --resume to continue it, "
                "or choose another --out"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            marker = read_marker(self.path) if fresh else None
            if fresh and marker is None:
                write_marker(self.path, kind)
        except OSError as e:  # a read-only or virtual file system, a full disk, a bad name
            raise RunDirError(
                f"cannot make the run directory '{self.path}' ({e.strerror or e}); "
                "choose another --out"
            ) from None
        if marker is not None and marker["kind"] != kind:
            raise RunDirError(
                f"'{self.path}' was made for a {marker['kind']}, not a {kind}; choose another --out"
            )

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(
        self,
        tasks_done: int,
        model: nn.Module,
        strategies_state: list[dict[str, Any]],
        state: dict[str, Any],
        optimizer_state: dict[str, Any] | None,
        rng: dict[str, Any],
        keep: int,
    ) -> None:
        """Write the checkpoint after ``tasks_done`` tasks into ``checkpoints/task-000k``: every
        file into a temporary folder, flushed to the disk, ``state.json`` (listing the files and
        their sizes) last; then the folder is renamed into place and ``LATEST.json`` replaced."""
        name = f"task-{tasks_done:04d}"
        final = self.ckpt_root / name
        with atomic_folder(final) as tmp:
            write_atomic(tmp / "model.safetensors", lambda p: save_model(model, str(p)))
            meta = dict(state)
            meta["schema_version"] = SCHEMA_VERSION
            meta["tasks_done"] = tasks_done
            meta["strategies"] = save_state(tmp / "strategies.safetensors", strategies_state)
            meta["rng"] = save_state(tmp / "rng.safetensors", rng)
            meta["optimizer"] = (
                save_state(tmp / "optimizer.safetensors", optimizer_state)
                if optimizer_state
                else None
            )
            meta["files"] = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
            write_json(tmp / "state.json", meta)
        write_json(self.ckpt_root / "LATEST.json", {"tasks_done": tasks_done, "dir": name})
        done = sorted(p for p in self.ckpt_root.glob("task-*") if p.is_dir())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def checkpoints(self) -> list[Path]:
        """The checkpoint folders, newest first (names sort in the order they were written)."""
        if not self.ckpt_root.is_dir():
            return []
        return sorted(
            (p for p in self.ckpt_root.glob("task-*") if p.is_dir() and NAME.match(p.name)),
            reverse=True,
        )

    def load_checkpoint(
        self, expect: Expect | None = None, warn: Callable[[str], None] | None = None
    ) -> dict[str, Any] | None:
        """The latest checkpoint's state (tensors loaded), or None if there is none.

        Everything is checked first (:mod:`retain.utils.integrity`). When the latest checkpoint
        (or ``LATEST.json``) is damaged and an older one is intact, the run resumes from that
        one, with a warning: it trains again the tasks after it, to the same result."""
        latest = self.ckpt_root / "LATEST.json"
        folders = self.checkpoints()
        if not latest.is_file() and not folders:
            return None
        first: Damaged | None = None
        tasks_done: int | None = None
        try:
            if not latest.is_file():
                raise Damaged(latest, "missing")
            tasks_done, name = check_latest(latest)
            folders = [self.ckpt_root / name] + [p for p in folders if p.name < name]
        except Damaged as e:
            first = e
        for folder in folders:
            try:
                meta = self._load(folder, expect or Expect(), tasks_done if first is None else None)
            except Damaged as e:
                first = first or e
                continue
            if first is not None and warn is not None:
                warn(
                    f"'{first.path}' cannot be used ({first.reason}); resuming from the "
                    f"checkpoint after task {meta['tasks_done']} ('{folder}')"
                )
            return meta
        assert first is not None
        raise first.with_fix(
            f"restore it, or delete '{self.ckpt_root}' to start the run again from its first "
            "task (resume with the same --out)"
        )

    def _load(self, folder: Path, expect: Expect, tasks_done: int | None) -> dict[str, Any]:
        meta = check_checkpoint(folder, expect, tasks_done)
        for key, file in SKELETONS.items():
            if meta.get(key) is not None:
                try:
                    meta[key] = load_state(folder / file, meta[key])
                except Exception as e:  # SafetensorError: checked above, so a disk error
                    raise Damaged(folder / file, str(e).splitlines()[0]) from None
        check_loaded(meta, folder)
        meta["model_path"] = str(folder / "model.safetensors")
        return meta


def load_weights(model: nn.Module, path: str | Path) -> None:
    check_weights(model, Path(path))
    missing, unexpected = load_model(model, str(path), strict=False)
    if missing or unexpected:
        raise RunDirError(
            f"checkpoint '{path}' does not fit the model (missing {list(missing)[:3]}, "
            f"unexpected {list(unexpected)[:3]}); resume with the config the run was started with"
        )


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    sd = optimizer.state_dict()
    groups = [
        {k: v for k, v in g.items() if k != "names"} | {"names": g.get("names", [])}
        for g in sd["param_groups"]
    ]
    return {"state": sd["state"], "param_groups": groups}
