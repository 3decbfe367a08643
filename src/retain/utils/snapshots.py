"""Parameter snapshots along a run's training path (``output.snapshots: N``), for the landscape.

With N > 0 a run writes, in ``RUN/snapshots/``, one safetensors file per snapshot:

    t00-end.safetensors          the model before any training (the start of the path)
    t01-s0000040.safetensors     task 1 after optimizer step 40 (N - 1 of these per task, evenly
    ...                          spaced over the task's planned steps)
    t01-end.safetensors          task 1 finished: the model R's row 1 scores (after early
                                 stopping's restore and the ``after_task`` hooks)

Each holds the model's trainable parameters and its floating-point buffers (BatchNorm's running
statistics), under the names ``named_parameters`` gives them, in their own dtype; the header's
metadata says the task (index and name), the step and whether it is a task's end. Frozen
parameters are not written: every snapshot of a run shares them. A snapshot of an MLP
784-400-400-10 is 1.9 MB, so 10 per task over two tasks is about 40 MB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from retain.utils.files import write_atomic

FOLDER = "snapshots"
_NAME = re.compile(r"^t(\d{2,})-(?:s(\d+)|end)\.safetensors$")


@dataclass(frozen=True)
class Snapshot:
    """One snapshot file: after ``step`` optimizer steps of task ``task`` (1-based; 0 is the
    model before training), or at the task's end (``end``)."""

    path: Path
    task: int
    task_name: str
    step: int
    end: bool

    def load(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path))


def tensors_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a snapshot holds: trainable parameters and floating-point buffers, detached on CPU."""
    out = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    out.update({n: b.detach() for n, b in model.named_buffers() if b.is_floating_point()})
    return {n: t.cpu().contiguous().clone() for n, t in out.items()}


def save(run_dir: Path, model: nn.Module, task: int, task_name: str, step: int, end: bool) -> Path:
    """Write one snapshot of ``model`` into ``run_dir/snapshots`` (atomically)."""
    folder = Path(run_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    name = f"t{task:02d}-{'end' if end else f's{step:07d}'}.safetensors"
    meta = {"task": str(task), "task_name": task_name, "step": str(step), "end": str(end)}
    tensors = tensors_of(model)
    return write_atomic(folder / name, lambda p: save_file(tensors, str(p), metadata=meta))


def every(total_steps: int, n: int) -> int | None:
    """The interval, in optimizer steps, of the N - 1 snapshots inside a task of
    ``total_steps`` steps (None: none inside; the task's end is always written)."""
    if n <= 1 or total_steps <= 1:
        return None
    return max(1, total_steps // n)


def inside(step: int, total_steps: int, n: int) -> bool:
    """Whether the snapshot due at ``step`` (a multiple of :func:`every`) is one of the N - 1
    inside the task: the one at the task's last step is its end snapshot instead."""
    interval = every(total_steps, n)
    return interval is not None and step < total_steps and step // interval <= n - 1


def listing(run_dir: Path) -> list[Snapshot]:
    """A run's snapshots in training order (task, then step, each task's end last)."""
    folder = Path(run_dir) / FOLDER
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m is None:
            continue
        with safe_open(str(p), "pt") as f:
            meta = f.metadata() or {}
        task, end = int(m.group(1)), m.group(2) is None
        step = int(meta.get("step", m.group(2) or 0))
        found.append(Snapshot(p, task, meta.get("task_name", f"task {task}"), step, end))
    return sorted(found, key=lambda s: (s.task, s.end, s.step))
