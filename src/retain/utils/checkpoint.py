"""Run directories and per-task checkpoints.

Layout of a run directory::

    config.resolved.yaml      the full config (a run is reproducible from it alone)
    result.json               the source of truth, rewritten after every task (status: running,
                              then complete)
    metrics.csv  report.md  report.html  plots/*.png   renderings of result.json
    checkpoints/LATEST.json   {"tasks_done": k, "dir": "task-000k"}
    checkpoints/task-000k/    model.safetensors, strategies.safetensors, optimizer.safetensors,
                              rng.safetensors and state.json (everything that is not a tensor)
    checkpoints/step-000k-SSSSSSSSS/   inside task k, after its optimizer step S
                              (train.checkpoint_every; format in retain.midtask)

A checkpoint folder is written under a temporary name and renamed when complete, and LATEST.json
is replaced atomically after that, so a run killed at any moment leaves the previous checkpoint
intact. Nothing here is pickled, and loading never unpickles.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from retain.errors import RunDirError
from retain.utils.files import write_atomic
from retain.utils.state import load_state, save_state, write_json

SCHEMA_VERSION = 1


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
        return self.path.exists() and any(self.path.iterdir())

    def ensure_new_or_resumable(self, resume: bool) -> None:
        if not is_main_process():
            return
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"run directory '{self.path}' is a file; choose another --out")
        if self.has_content() and not resume:
            raise RunDirError(
                f"run directory '{self.path}' already exists; pass --resume to continue it, "
                "or choose another --out"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a read-only or virtual file system, a full disk, a bad name
            raise RunDirError(
                f"cannot make the run directory '{self.path}' ({e.strerror or e}); "
                "choose another --out"
            ) from None

    # ------------------------------------------------------------------ checkpoints

    def latest(self) -> dict[str, Any] | None:
        p = self.ckpt_root / "LATEST.json"
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            raise RunDirError(
                f"'{p}' is damaged; delete it to restart the run from scratch"
            ) from None

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
        name = f"task-{tasks_done:04d}"
        final = self.ckpt_root / name
        tmp = self.ckpt_root / f".{name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        write_atomic(tmp / "model.safetensors", lambda p: save_model(model, str(p)))
        meta = dict(state)
        meta["schema_version"] = SCHEMA_VERSION
        meta["tasks_done"] = tasks_done
        meta["strategies"] = save_state(tmp / "strategies.safetensors", strategies_state)
        meta["rng"] = save_state(tmp / "rng.safetensors", rng)
        meta["optimizer"] = (
            save_state(tmp / "optimizer.safetensors", optimizer_state) if optimizer_state else None
        )
        write_json(tmp / "state.json", meta)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_json(self.ckpt_root / "LATEST.json", {"tasks_done": tasks_done, "dir": name})
        done = sorted(p for p in self.ckpt_root.glob("task-*") if p.is_dir())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The latest checkpoint's state (tensors loaded), or None if there is none."""
        latest = self.latest()
        if latest is None:
            return None
        d = self.ckpt_root / latest["dir"]
        try:
            meta = json.loads((d / "state.json").read_text())
        except (OSError, json.JSONDecodeError):
            raise RunDirError(
                f"checkpoint '{d}' is incomplete or damaged; delete it and "
                "checkpoints/LATEST.json to restart from scratch"
            ) from None
        meta["strategies"] = load_state(d / "strategies.safetensors", meta["strategies"])
        meta["rng"] = load_state(d / "rng.safetensors", meta["rng"])
        if meta.get("optimizer") is not None:
            meta["optimizer"] = load_state(d / "optimizer.safetensors", meta["optimizer"])
        meta["model_path"] = str(d / "model.safetensors")
        return meta


def load_weights(model: nn.Module, path: str | Path) -> None:
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
