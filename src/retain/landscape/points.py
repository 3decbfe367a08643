"""Which models a landscape is drawn through, read from run directories.

A run directory gives the model after each task from its snapshots (``output.snapshots``) or,
without them, from its kept checkpoints (``output.keep_checkpoints`` at least the number of
tasks); its training path only from snapshots. The joint model comes from a joint run (``--joint
DIR``, or the ``joint`` run of a comparison), or is trained for the landscape on request.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from retain.config import RunConfig, load_config
from retain.errors import ConfigError
from retain.report.record import CompareRecord, RunRecord, load_record
from retain.utils import snapshots
from retain.utils.snapshots import Snapshot

Tensors = dict[str, torch.Tensor]


@dataclass
class Run:
    """A finished (or partly finished) sequential or joint run: its folder, record and config."""

    path: Path
    record: RunRecord
    config: RunConfig

    @property
    def trained(self) -> int:
        """Tasks trained so far (one for the joint reference)."""
        return (
            max(0, len(self.record.matrix) - 1)
            if not self.record.joint
            else (1 if len(self.record.matrix) > 1 else 0)
        )

    def snapshots(self) -> list[Snapshot]:
        return snapshots.listing(self.path)

    def end_file(self, task: int) -> Path:
        """The file holding the model after task ``task`` (1-based; 0: before training)."""
        snap = next((s for s in self.snapshots() if s.task == task and s.end), None)
        if snap is not None:
            return snap.path
        ckpt = self.path / "checkpoints" / f"task-{task:04d}" / "model.safetensors"
        if task > 0 and ckpt.is_file():
            return ckpt
        raise ConfigError(
            f"'{self.path}' kept no parameters after task {task}: rerun it with "
            f"output.snapshots=10 (or output.keep_checkpoints={max(task, 2)})"
        )

    def end(self, task: int, names: list[str]) -> Tensors:
        """The model after task ``task``: its tensors ``names``."""
        path = self.end_file(task)
        return pick(path, names, f"'{path}'")


def pick(path: Path, names: list[str], what: str) -> Tensors:
    """The tensors ``names`` of a safetensors file, refused in one line when one is missing."""
    with safe_open(str(path), "pt") as f:
        have = set(f.keys())
        missing = [n for n in names if n not in have]
        if missing:
            raise ConfigError(
                f"{what} lacks {missing[0]!r} ({len(missing)} tensors missing): it does not fit "
                "the model its run's config builds (a strategy that changes the model between "
                "tasks has no single parameter space to draw a plane in)"
            )
        return {n: f.get_tensor(n) for n in names}


def read_run(path: Path, what: str = "RUN_DIR") -> Run:
    """A run directory's record and config; a comparison or a run over seeds is refused here
    (see :func:`resolve`)."""
    if not path.is_dir():
        raise ConfigError(f"{what} '{path}' is not a folder; give a run directory of retain run")
    if not (path / "result.json").is_file() or not (path / "config.resolved.yaml").is_file():
        raise ConfigError(
            f"'{path}' is not a run directory (no result.json and config.resolved.yaml); give a "
            "folder written by retain run or retain compare"
        )
    record = load_record(path / "result.json")
    if isinstance(record, CompareRecord):
        raise ConfigError(f"'{path}' is a comparison; give one of its runs as {what}")
    if record.spread is not None:
        raise ConfigError(
            f"'{path}' is a run over several seeds; give one seed's folder, e.g. "
            f"{path / f'seed-{record.spread.seeds[0]}'}"
        )
    return Run(path, record, load_config(path / "config.resolved.yaml"))


def resolve(run_dir: Path, joint: Path | None, run: str | None) -> tuple[Run, Run | None, Path]:
    """The sequential run, the joint run (None when there is none to take) and the folder the
    landscape belongs to (the comparison's, for a run of a comparison)."""
    if not run_dir.is_dir():
        raise ConfigError(f"RUN_DIR '{run_dir}' is not a folder; give a run directory")
    result = run_dir / "result.json"
    record = load_record(result) if result.is_file() else None
    if not isinstance(record, CompareRecord):
        if run is not None:
            raise ConfigError(f"--run picks a run of a comparison, and '{run_dir}' is none")
        seq = read_run(run_dir)
        return seq, read_run(joint, "--joint") if joint is not None else None, run_dir
    subs = {p.name: read_run(p) for p in sorted(run_dir.iterdir()) if (p / "result.json").is_file()}
    labelled = {r.record.strategy: r for r in subs.values()} | subs
    joints = [r for r in subs.values() if r.record.joint]
    if run is not None:
        if run not in labelled:
            raise ConfigError(
                f"--run '{run}' is not a run of '{run_dir}'; its runs: {', '.join(subs)}"
            )
        seq = labelled[run]
    else:
        seqs = [r for r in subs.values() if not r.record.joint]
        if not seqs:
            raise ConfigError(f"'{run_dir}' holds no sequential run to draw; only joint")
        with_path = [r for r in seqs if r.snapshots()]
        seq = (with_path or seqs)[0]
    if joint is not None:
        return seq, read_run(joint, "--joint"), run_dir
    return seq, joints[0] if joints else None, run_dir


def check_joint(seq: Run, joint: Run) -> None:
    """The joint model must be a joint run of the same tasks and model."""
    if not joint.record.joint:
        raise ConfigError(
            f"--joint '{joint.path}' is not a joint run (strategy joint); train one with "
            "retain compare CONFIG --strategies finetune,joint, or pass --train-joint"
        )
    if list(joint.record.tasks) != list(seq.record.tasks):
        raise ConfigError(
            f"--joint '{joint.path}' trained on tasks {joint.record.tasks}, the run on "
            f"{seq.record.tasks}; give a joint run of the same stream"
        )
    if joint.config.model != seq.config.model:
        raise ConfigError(
            f"--joint '{joint.path}' has another model config than '{seq.path}'; give a joint "
            "run of the same model"
        )


def joint_config(cfg: RunConfig) -> RunConfig:
    """The run's config with the joint strategy: the model trained on the union of its tasks."""
    out = copy.deepcopy(cfg)
    out.strategies = [{"name": "joint"}]
    out.seeds = None
    out.output.snapshots = 1
    out.output.plots = False
    out.output.dir = None
    return out


def train_joint(seq: Run, folder: Path, progress: Any = None, warn: Any = None) -> Run:
    """The joint model for ``seq``, trained with its config into ``folder`` (a finished one
    there is reused, an unfinished one resumed)."""
    from retain.runner import run_config

    done = folder / "result.json"
    if done.is_file():
        rec = load_record(done)
        if isinstance(rec, RunRecord) and rec.complete:
            return read_run(folder, "--train-joint")
    run_config(
        joint_config(seq.config), folder, resume=folder.exists(), progress=progress, warn=warn
    )
    return read_run(folder, "--train-joint")
