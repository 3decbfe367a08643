"""Checkpoints and resume: a stopped run continues from its last finished task and ends with the
same result as an uninterrupted run; nothing in a run directory is a pickle."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import CrashBefore

from retain.api import run
from retain.config import OutputConfig, RunConfig, TrainConfig
from retain.errors import RunDirError
from retain.models import MLP
from retain.strategies.base import Strategy

CFG = TrainConfig(epochs=2, batch_size=32, optimizer="adam", lr=1e-3, optimizer_state="keep")


@dataclass
class Counter(Strategy):
    """Has learned state (a tensor and a number) that must survive the checkpoint."""

    def __post_init__(self):
        self.seen_ = torch.zeros(3)
        self.tasks_done_ = 0

    def after_task(self, model, ctx):
        self.seen_[ctx.task_index] += len(ctx.task.train)
        self.tasks_done_ += 1
        return model


def _mlp():
    torch.manual_seed(0)
    return MLP(64, 6, [100, 100])


def test_resume_after_a_crash_gives_the_same_result(tiny_stream, tmp_path):
    full = run(_mlp(), tiny_stream, [Counter(), CrashBefore()], RunConfig(train=CFG, seed=1))
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(
            _mlp(),
            tiny_stream,
            [Counter(), CrashBefore(armed=True)],
            RunConfig(train=CFG, seed=1),
            out_dir=out,
        )
    assert json.loads((out / "checkpoints" / "LATEST.json").read_text())["tasks_done"] == 2
    assert json.loads((out / "result.json").read_text())["status"] == "running"
    counter = Counter()
    resumed = run(
        _mlp(),
        tiny_stream,
        [counter, CrashBefore()],
        RunConfig(train=CFG, seed=1),
        out_dir=out,
        resume=True,
    )
    assert resumed.matrix == full.matrix
    assert resumed.metrics == full.metrics
    assert counter.tasks_done_ == 3 and counter.seen_.tolist() == [
        len(t.train) for t in tiny_stream
    ]
    assert json.loads((out / "result.json").read_text())["status"] == "complete"


def test_run_directory_holds_no_pickles(tiny_stream, tmp_path):
    run(_mlp(), tiny_stream, [Counter()], RunConfig(train=CFG), out_dir=tmp_path / "r")
    files = [p for p in (tmp_path / "r").rglob("*") if p.is_file()]
    assert files
    assert {p.suffix for p in files} <= {".json", ".safetensors", ".yaml"}
    ckpts = sorted((tmp_path / "r" / "checkpoints").glob("task-*"))
    assert [p.name for p in ckpts] == ["task-0003"]  # keep_checkpoints=1 prunes older ones
    names = {p.name for p in ckpts[0].iterdir()}
    assert names == {
        "model.safetensors",
        "strategies.safetensors",
        "optimizer.safetensors",
        "rng.safetensors",
        "state.json",
    }


def test_existing_run_dir_is_refused_and_left_intact(tiny_stream, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="already exists; pass --resume"):
        run(_mlp(), tiny_stream, ["finetune"], RunConfig(train=CFG), out_dir=out)
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def _write_config(path: Path, epochs: int) -> Path:
    path.write_text(
        "seed: 0\n"
        "stream: {dataset: digits, scenario: split, n_tasks: 5}\n"
        "model: {name: mlp, hidden: [100, 100]}\n"
        f"train: {{epochs: {epochs}, batch_size: 32, optimizer: adam, lr: 0.001}}\n"
        "output: {plots: false}\n"
    )
    return path


# ``retain run`` in a process that kills itself (SIGKILL: no cleanup, no atexit) when finetune
# starts task KILL_AT, after the checkpoint of the task before it was written: a kill at a known
# point, whatever the machine's load, with the config unchanged for the resume.
KILL_AT = 2
_KILLED_RUN = f"""
import os, signal, sys
from retain.cli import main
from retain.strategies.finetune import Finetune

def before_task(self, model, ctx):
    if ctx.task_index == {KILL_AT}:
        os.kill(os.getpid(), signal.SIGKILL)
    return model

Finetune.before_task = before_task
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # a separate process that imports torch, killed and resumed
def test_killed_cli_run_resumes_to_the_same_metrics(tmp_path):
    from retain.cli import main

    cfg = _write_config(tmp_path / "exp.yaml", epochs=1)
    out = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, "run", str(cfg), "--out", str(out), "-q"],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert json.loads((out / "checkpoints" / "LATEST.json").read_text())["tasks_done"] == KILL_AT
    assert json.loads((out / "result.json").read_text())["status"] == "running"
    assert main(["run", str(cfg), "--out", str(out), "--resume", "-q"]) == 0
    resumed = json.loads((out / "result.json").read_text())
    assert main(["run", str(cfg), "--out", str(tmp_path / "whole"), "-q"]) == 0
    whole = json.loads((tmp_path / "whole" / "result.json").read_text())
    assert resumed["status"] == "complete"
    assert resumed["matrix"] == whole["matrix"]
    assert resumed["metrics"] == whole["metrics"]


def test_resume_refuses_a_changed_config(tmp_path, capsys):
    from retain.cli import main

    cfg = _write_config(tmp_path / "exp.yaml", epochs=1)
    out = tmp_path / "r"
    assert main(["run", str(cfg), "--out", str(out), "-q", "stream.n_tasks=5"]) == 0
    before = (out / "result.json").read_text()
    assert main(["run", str(cfg), "--out", str(out), "--resume", "-q", "train.lr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "config differs" in err and "train.lr" in err and "Traceback" not in err
    assert (out / "result.json").read_text() == before


def test_resume_keeps_optimizer_state_when_the_trainable_set_changes(
    tiny_stream, tmp_path, crash_and_resume
):
    """Regression: with optimizer_state=keep, a strategy that freezes layers from task 2 on made
    the saved optimizer state (indexed by position) not fit the new optimizer on resume."""
    from retain.strategies.freeze import Freeze

    cfg = TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=1e-3, optimizer_state="keep")
    r = crash_and_resume(
        tiny_stream, lambda: [Freeze(last_k=1, from_task=2)], cfg, tmp_path / "r", _mlp, seed=2
    )
    assert r.resumed.matrix == r.full.matrix


def test_a_run_written_before_a_config_key_existed_resumes(tmp_path):
    """A key added since (here train.order and stream.mix) is read at its default, so it is no
    change; a changed setting the old run did write still is."""
    import yaml

    from retain.config import RunConfig, TrainConfig
    from retain.errors import RunDirError
    from retain.resume import check_config

    cfg = RunConfig(train=TrainConfig(epochs=1))
    old = cfg.to_dict()
    del old["train"]["order"], old["stream"]["mix"]
    (tmp_path / "config.resolved.yaml").write_text(yaml.safe_dump(old))
    check_config(tmp_path, cfg)
    with pytest.raises(RunDirError, match="train.epochs"):
        check_config(tmp_path, RunConfig(train=TrainConfig(epochs=2)))


# ---------------------------------------------------------------- damaged checkpoints

KEEP3 = dict(train=CFG, seed=1, output=OutputConfig(keep_checkpoints=3))


def _crashed(stream, out):
    """A run stopped before its third task, with the checkpoints after tasks 1 and 2 kept."""
    with pytest.raises(KeyboardInterrupt):
        run(_mlp(), stream, [Counter(), CrashBefore(armed=True)], RunConfig(**KEEP3), out_dir=out)
    assert sorted(p.name for p in (out / "checkpoints").glob("task-*")) == [
        "task-0001",
        "task-0002",
    ]


def _resume(stream, out, warnings):
    return run(
        _mlp(),
        stream,
        [Counter(), CrashBefore()],
        RunConfig(**KEEP3),
        out_dir=out,
        resume=True,
        warn=warnings.append,
    )


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


@pytest.mark.parametrize(
    ("damage", "named", "after"),
    [
        (lambda c: _cut(c / "task-0002" / "state.json"), "task-0002/state.json", 1),
        (lambda c: _cut(c / "task-0002" / "model.safetensors"), "task-0002/model.safetensors", 1),
        (lambda c: (c / "task-0002" / "rng.safetensors").unlink(), "task-0002/rng.safetensors", 1),
        (lambda c: (c / "LATEST.json").write_text('{"tasks_done": 9, "dir": "task-0009"}'), "9", 2),
    ],
    ids=["state-cut", "weights-cut", "rng-missing", "latest-points-nowhere"],
)
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(
    tiny_stream, tmp_path, damage, named, after
):
    """Resumed from an older checkpoint (after task 1, or the newest intact one when LATEST.json
    points nowhere), the run trains the tasks after it again from its saved state and random
    generators: R is the uninterrupted run's, bit for bit."""
    full = run(_mlp(), tiny_stream, [Counter(), CrashBefore()], RunConfig(**KEEP3))
    out = tmp_path / "run"
    _crashed(tiny_stream, out)
    damage(out / "checkpoints")
    warnings: list[str] = []
    resumed = _resume(tiny_stream, out, warnings)
    assert resumed.matrix == full.matrix
    assert resumed.metrics == full.metrics
    assert len(warnings) == 1 and named in warnings[0], warnings
    assert f"resuming from the checkpoint after task {after}" in warnings[0]
    assert warnings[0] in json.loads((out / "result.json").read_text())["warnings"]
    latest = json.loads((out / "checkpoints" / "LATEST.json").read_text())
    assert latest == {"tasks_done": 3, "dir": "task-0003"}


def test_a_damaged_latest_json_resumes_from_the_newest_intact_checkpoint(tiny_stream, tmp_path):
    full = run(_mlp(), tiny_stream, [Counter(), CrashBefore()], RunConfig(**KEEP3))
    out = tmp_path / "run"
    _crashed(tiny_stream, out)
    (out / "checkpoints" / "LATEST.json").write_text('{"tasks_do')
    warnings: list[str] = []
    resumed = _resume(tiny_stream, out, warnings)
    assert resumed.matrix == full.matrix
    assert len(warnings) == 1 and "LATEST.json" in warnings[0]
    assert "after task 2" in warnings[0]


def test_no_intact_checkpoint_is_one_line_and_nothing_changes(tiny_stream, tmp_path):
    out = tmp_path / "run"
    _crashed(tiny_stream, out)
    for name in ("task-0001", "task-0002"):
        _cut(out / "checkpoints" / name / "state.json")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError, match=r"task-0002/state.json' cannot be used.*delete"):
        _resume(tiny_stream, out, [])
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_resume_removes_what_killed_writes_left(tiny_stream, tmp_path):
    out = tmp_path / "run"
    _crashed(tiny_stream, out)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its id is that of a process that is gone, as after a kill -9
    left = [
        out / f".result.json.tmp-{proc.pid}",
        out / "checkpoints" / f".LATEST.json.tmp-{proc.pid}",
        out / "checkpoints" / f".task-0003.tmp-{proc.pid}" / "model.safetensors",
    ]
    for p in left:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    _resume(tiny_stream, out, [])
    assert not any(p.name.startswith(".") for p in out.rglob("*"))


def test_every_run_directory_is_marked_and_an_older_one_is_marked_on_resume(tiny_stream, tmp_path):
    out = tmp_path / "run"
    _crashed(tiny_stream, out)
    marker = json.loads((out / "retain.json").read_text())
    assert marker["kind"] == "run" and marker["format"] == 1
    (out / "retain.json").unlink()  # a run directory written before the marker existed
    state = json.loads((out / "checkpoints" / "task-0002" / "state.json").read_text())
    assert state["files"]["model.safetensors"] == (
        (out / "checkpoints" / "task-0002" / "model.safetensors").stat().st_size
    )
    _resume(tiny_stream, out, [])
    assert json.loads((out / "retain.json").read_text())["kind"] == "run"


def test_resume_into_a_missing_folder_starts_a_new_run_and_says_so(tmp_path, capsys):
    from retain.cli import main

    cfg = _write_config(tmp_path / "exp.yaml", epochs=1)
    out = tmp_path / "new"
    assert main(["run", str(cfg), "--out", str(out), "--resume", "-q", "stream.n_tasks=2"]) == 0
    assert "nothing to resume" in capsys.readouterr().err
    assert json.loads((out / "result.json").read_text())["status"] == "complete"
