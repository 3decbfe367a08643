"""Mid-task checkpoints (``train.checkpoint_every``): a run saved every N optimizer steps inside a
task, and ``--resume`` continuing from the newest one to the same result, bit for bit on a CPU.

On disk, beside the end-of-task checkpoints (:mod:`retain.utils.checkpoint`)::

    checkpoints/step-TTTT-SSSSSSSSS/   while the task of index TTTT trains (TTTT tasks done),
                                       after its optimizer step SSSSSSSSS
        model.safetensors   the weights (as in an end-of-task checkpoint)
        state.safetensors   every tensor of the state below
        state.json          {"kind": "retain.step_checkpoint", "format": 1, "tasks_done": T,
                             "task": name, "step": S, "state": the state, each tensor replaced
                             by {"__tensor__": key} (see retain.utils.state)}

The state: ``optimizer`` (its ``state_dict``), ``strategies`` (each one's ``state_dict``: buffers,
importances, SI's path integral), ``rng`` (the torch, numpy, python and CUDA generators),
``generator`` (the task's generator, which the data order and the buffers draw from), ``scaler``
(fp16's loss scale), ``guard`` and ``evals`` (the checks and evaluations inside the task) and
``loop`` (counters, running loss, early stopping, statistics so far and the loader's position:
:func:`retain.train.loop.loop_state`).

A step checkpoint holds only what changes while a task trains. Resuming from one starts from the
end-of-task checkpoint ``task-TTTT`` (for T = 0, the initial model), prepares the task as the
uninterrupted run did (the ``before_task`` hooks: a teacher snapshot, a new column or adapter,
frozen layers; the optimizer; the data order), then loads the step checkpoint over it. So what a
strategy takes from the weights at the task's start (LwF's teacher) is rebuilt exactly instead of
being written at every step; mid-task checkpoints therefore need ``output.checkpoints``.

Each folder is written under a temporary name (``.step-TTTT-SSSSSSSSS.tmp-PID``, deleted by the
next write if a killed process left it) and renamed when complete. The
``train.keep_step_checkpoints`` newest of the task are kept, and a task's are deleted once its
end-of-task checkpoint is written: on disk at most ``keep_step_checkpoints`` step checkpoints,
each the size of the model, the optimizer's state (Adam: twice the model) and the strategies'.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_model
from torch import nn

from retain.errors import ConfigError
from retain.run_state import RunState
from retain.strategies.context import TaskContext
from retain.train.loop import Checkpoints
from retain.utils.checkpoint import load_weights
from retain.utils.files import atomic_folder, write_atomic
from retain.utils.state import load_state, rng_state, save_state, set_rng_state, write_json

KIND = "retain.step_checkpoint"
FORMAT = 1
_NAME = re.compile(r"step-(\d{4,})-(\d{9,})")


def folder(tasks_done: int, step: int) -> str:
    return f"step-{tasks_done:04d}-{step:09d}"


def step_dirs(root: Path) -> list[tuple[int, int, Path]]:
    """Every complete step checkpoint under ``root`` as ``(tasks_done, step, path)``, oldest
    first (temporary folders of an interrupted write are not listed)."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.fullmatch(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), int(m.group(2)), p))
    return sorted(found)


def write(
    root: Path,
    tasks_done: int,
    task: str,
    step: int,
    model: nn.Module,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write one step checkpoint; keep the ``keep`` newest of this task, delete the others."""
    name = folder(tasks_done, step)
    _remove_partial(root)
    with atomic_folder(root / name) as tmp:
        write_atomic(tmp / "model.safetensors", lambda p: save_model(model, str(p)))
        skeleton = save_state(tmp / "state.safetensors", state)
        meta = {
            "kind": KIND,
            "format": FORMAT,
            "tasks_done": tasks_done,
            "task": task,
            "step": step,
        }
        write_json(tmp / "state.json", {**meta, "state": skeleton})
    mine = [p for t, _, p in step_dirs(root) if t == tasks_done]
    for t, _, p in step_dirs(root):
        if t != tasks_done or p in mine[:-keep]:
            shutil.rmtree(p, ignore_errors=True)
    return root / name


def _remove_partial(root: Path) -> None:
    """Delete step checkpoints a killed process left half-written (one process writes a run)."""
    if root.is_dir():
        for p in root.glob(".step-*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def read(root: Path, tasks_done: int, warn: Any = None) -> dict[str, Any] | None:
    """The newest intact step checkpoint of the task after ``tasks_done`` finished ones (its
    ``state.json`` with the tensors loaded, and ``model_path``), or None. A damaged one is
    skipped, with a warning, for the one before it."""
    for t, step, path in reversed(step_dirs(root)):
        if t != tasks_done:
            continue
        try:
            meta = json.loads((path / "state.json").read_text())
            if meta.get("kind") != KIND or meta.get("format") != FORMAT:
                raise ValueError("state.json is not a step checkpoint of this format")
            if (meta["tasks_done"], meta["step"], meta["state"]["loop"]["step"]) != (t, step, step):
                raise ValueError("state.json names another task or step than its folder")
            meta["state"] = load_state(path / "state.safetensors", meta["state"])
            with safe_open(path / "model.safetensors", "pt"):  # its header fits its size
                pass
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
            if warn is not None:
                warn(f"step checkpoint '{path}' is damaged ({e}); trying an earlier one")
            continue
        meta["model_path"] = str(path / "model.safetensors")
        return meta
    return None


def drop_finished(r: RunState, tasks_done: int) -> None:
    """Delete the step checkpoints of tasks that now have an end-of-task checkpoint."""
    if r.run_dir is None or not r.acc.is_main_process:
        return
    for t, _, p in step_dirs(r.run_dir.ckpt_root):
        if t < tasks_done:
            shutil.rmtree(p, ignore_errors=True)
    _remove_partial(r.run_dir.ckpt_root)


def load(r: RunState, tasks_done: int) -> dict[str, Any] | None:
    """The step checkpoint a resumed run continues its next task from (None: from its start)."""
    if r.run_dir is None:
        return None
    return read(r.run_dir.ckpt_root, tasks_done, r.warn)


def checkpoints(
    r: RunState,
    ctx: TaskContext,
    model: nn.Module,
    optimizer: Any,
    loader: Any,
    evals: list[dict[str, Any]],
    guard: Any,
) -> Checkpoints | None:
    """The loop's mid-task checkpoints for task ``ctx.task_index``, prepared as the
    uninterrupted run prepared it; a step checkpoint of this task saved earlier is loaded over
    it here (weights, optimizer, strategies, checks, random state), and the loop continues it."""
    saved, r.step_saved = r.step_saved, None  # only the first task of a resumed run has one
    resume = None
    if saved is not None and saved["tasks_done"] == ctx.task_index:
        resume = _load(r, ctx, model, optimizer, evals, guard, saved)
    every = r.cfg.train.checkpoint_every or None
    if r.run_dir is None:
        every = None
    if every is None and resume is None:
        return None
    if not callable(getattr(loader, "state_dict", None)):
        raise ConfigError(
            f"train.checkpoint_every: task '{ctx.task.name}' draws its batches from a "
            f"{type(loader).__name__}, which cannot save its place; unset train.checkpoint_every"
        )
    root, keep = r.run_dir.ckpt_root if r.run_dir else None, r.cfg.train.keep_step_checkpoints

    def save(loop: dict[str, Any]) -> None:
        if root is None or not r.acc.is_main_process:
            return
        state = {
            "optimizer": optimizer.state_dict(),
            "strategies": [s.state_dict() for s in r.strategies],
            "rng": rng_state(),
            "generator": ctx.generator.get_state(),
            "scaler": r.acc.scaler.state_dict() if r.acc.scaler is not None else None,
            "guard": guard.state_dict() if guard is not None else None,
            "evals": evals,
            "loop": loop,
        }
        model_ = r.acc.unwrap_model(model)
        write(root, ctx.task_index, ctx.task.name, loop["step"], model_, state, keep)

    return Checkpoints(every, save, resume)


def _load(
    r: RunState,
    ctx: TaskContext,
    model: nn.Module,
    optimizer: Any,
    evals: list[dict[str, Any]],
    guard: Any,
    saved: dict[str, Any],
) -> dict[str, Any]:
    """Load a step checkpoint over the prepared task; returns the loop's state."""
    state = saved["state"]
    load_weights(r.acc.unwrap_model(model), saved["model_path"])
    optimizer.load_state_dict(state["optimizer"])
    for s, st in zip(r.strategies, state["strategies"]):
        s.load_state_dict(st)
    if guard is not None and state["guard"] is not None:
        guard.load_state_dict(state["guard"])
    evals[:] = state["evals"]
    if r.acc.scaler is not None and state["scaler"]:
        r.acc.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    ctx.generator.set_state(state["generator"])
    return state["loop"]
