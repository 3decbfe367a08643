"""Mid-task checkpoints (train.checkpoint_every): a run stopped inside a task and resumed ends with
the same R and the same weights, bit for bit, as the run that was never stopped."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from retain.api import run
from retain.config import EvalConfig, OutputConfig, RunConfig, TrainConfig
from retain.data.scenarios import split
from retain.errors import ConfigError
from retain.midtask import step_dirs
from retain.models import MLP
from retain.strategies import build_all
from retain.strategies.base import Strategy

# 8 steps per task (two epochs of 5 batches, less 2), a checkpoint every 3: steps 3 and 6 of each
# task are saved, 8 is not.
TRAIN = dict(steps=8, batch_size=64, optimizer="adam", lr=1e-3, checkpoint_every=3)


@dataclass
class CrashAt(Strategy):
    """Raises after optimizer step ``at`` (counted over the run, from 1) while ``at`` is set,
    or in the ``after_task`` of task ``in_after_task``: a run stopped at a chosen point."""

    at: int = 0
    in_after_task: int | None = None

    def __post_init__(self):
        super().__post_init__()
        self._steps = 0

    def after_step(self, model, ctx):
        self._steps += 1
        if self._steps == self.at:
            raise KeyboardInterrupt(f"stopped after step {self.at}")

    def after_task(self, model, ctx):
        if ctx.task_index == self.in_after_task:
            raise KeyboardInterrupt("stopped in after_task")
        return model


@pytest.fixture(scope="module")
def two_tasks(digits):
    return split(digits, n_tasks=2, classes=[0, 1, 2, 3])


def _mlp():
    torch.manual_seed(0)
    return MLP(64, 4, [16])


def _cfg(**train):
    return RunConfig(train=TrainConfig(**{**TRAIN, **train}), seed=3)


def _stopped_and_resumed(stream, specs, out, stops, cfg=None, **stop):
    """Run ``specs`` into ``out``, stopping at each of ``stops`` (steps counted from each
    start), resuming after each; then resume to the end. Returns the last result."""
    cfg = cfg or _cfg
    for k, at in enumerate(stops):
        with pytest.raises(KeyboardInterrupt):
            strategies = [*build_all(specs), CrashAt(at=at, **stop)]
            run(_mlp(), stream, strategies, cfg(), out_dir=out, resume=k > 0)
    return run(_mlp(), stream, [*build_all(specs), CrashAt()], cfg(), out_dir=out, resume=True)


def _record(result):
    """The run record without what differs between any two runs (times, memory)."""

    def drop(x):
        if isinstance(x, dict):
            return {k: drop(v) for k, v in x.items() if not k.endswith("seconds")}
        return [drop(v) for v in x] if isinstance(x, list) else x

    d = result.record.to_dict()
    for key in ("timing", "memory", "started", "finished"):
        d.pop(key)
    return json.loads(json.dumps(drop(d)))


def _same(a, b):
    """The same R and weights, bit for bit, and the same record: curves, evaluations inside
    tasks, early stopping, strategies' statistics."""
    assert a.matrix == b.matrix
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert _record(a) == _record(b)


@pytest.mark.parametrize(
    "specs",
    [
        [{"name": "finetune"}],
        [{"name": "ewc", "lam": 10.0}],
        [{"name": "replay", "size": 40}],
        [{"name": "der", "size": 40, "beta": 0.5}],
        [{"name": "lwf"}],
        [{"name": "si"}, {"name": "agem", "size": 40, "batch_size": 16}],
    ],
    ids=["finetune", "ewc", "replay", "der", "lwf", "si+agem"],
)
def test_stopped_inside_tasks_resumes_bit_identical(two_tasks, tmp_path, specs):
    full = run(_mlp(), two_tasks, [*build_all(specs), CrashAt()], _cfg())
    out = tmp_path / "r"
    # Step 5 of task 0 (resumed from its step 3); then 9 steps later: step 4 of task 1 (from 3).
    resumed = _stopped_and_resumed(two_tasks, specs, out, [5, 9])
    _same(resumed, full)
    assert step_dirs(out / "checkpoints") == []  # a finished task's step checkpoints are gone


def test_schedules_accumulation_early_stopping_and_evaluations_resume(digits, tmp_path):
    """Warmup and cosine over the run, a kept optimizer with momentum, 2 micro-batches per step,
    early stopping on a validation split (lr 1 makes the validation loss jump: task 0 stops at
    step 16 of 21) and evaluations inside the task, stopped twice."""
    stream = split(digits, n_tasks=2, classes=[0, 1, 2, 3], validation=0.2)

    def cfg():
        train = TrainConfig(
            epochs=3,
            batch_size=16,
            optimizer="sgd",
            lr=1.0,
            momentum=0.5,
            grad_accum=2,
            schedule="cosine",
            warmup=0.2,
            schedule_scope="run",
            optimizer_state="keep",
            patience=1,
            eval_every=2,
            checkpoint_every=2,
        )
        return RunConfig(train=train, eval=EvalConfig(every_steps=4), seed=3)

    specs = [{"name": "replay", "size": 40}]
    full = run(_mlp(), stream, [*build_all(specs), CrashAt()], cfg())
    # Step 3 of task 0 (resumed from 2); then step 3 of task 1 (from 2).
    resumed = _stopped_and_resumed(stream, specs, tmp_path / "r", [3, 17], cfg=cfg)
    _same(resumed, full)
    record = _record(resumed)
    assert [e["stopped_at"] for e in record["early_stopping"]] == [16, None]
    assert all(record["curves"]["eval"])


def test_stopped_after_the_last_step_resumes_from_it(two_tasks, tmp_path):
    """A checkpoint at a task's last step, then a stop before its end-of-task checkpoint (in
    after_task): the resumed run goes straight to after_task."""
    cfg = lambda: _cfg(steps=6)  # noqa: E731
    specs = [{"name": "der", "size": 40}]
    full = run(_mlp(), two_tasks, [*build_all(specs), CrashAt()], cfg())
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        run(_mlp(), two_tasks, [*build_all(specs), CrashAt(in_after_task=0)], cfg(), out_dir=out)
    assert [(t, s) for t, s, _ in step_dirs(out / "checkpoints")] == [(0, 6)]
    resumed = run(
        _mlp(), two_tasks, [*build_all(specs), CrashAt()], cfg(), out_dir=out, resume=True
    )
    _same(resumed, full)


def test_checkpoint_every_may_change_on_resume(two_tasks, tmp_path):
    """How often a run checkpoints changes no result, so a resume may change it (or turn it
    off) without being refused as a changed config."""
    specs = [{"name": "replay", "size": 40}]
    full = run(_mlp(), two_tasks, [*build_all(specs), CrashAt()], _cfg())
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        run(_mlp(), two_tasks, [*build_all(specs), CrashAt(at=5)], _cfg(), out_dir=out)
    with pytest.raises(KeyboardInterrupt):
        strategies = [*build_all(specs), CrashAt(at=10)]  # from step 3: step 5 of task 1
        run(_mlp(), two_tasks, strategies, _cfg(checkpoint_every=2), out_dir=out, resume=True)
    assert [(t, s) for t, s, _ in step_dirs(out / "checkpoints")] == [(1, 4)]
    strategies = [*build_all(specs), CrashAt()]
    resumed = run(_mlp(), two_tasks, strategies, _cfg(checkpoint_every=0), out_dir=out, resume=True)
    assert resumed.matrix == full.matrix
    assert all(
        torch.equal(a, b) for a, b in zip(resumed.model.parameters(), full.model.parameters())
    )


def test_step_checkpoint_files_and_how_many_are_kept(two_tasks, tmp_path):
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        strategies = [*build_all([{"name": "replay", "size": 40}]), CrashAt(at=15)]
        run(_mlp(), two_tasks, strategies, _cfg(keep_step_checkpoints=2), out_dir=out)
    found = step_dirs(out / "checkpoints")
    assert [(t, s) for t, s, _ in found] == [(1, 3), (1, 6)]  # task 0's went with its end
    names = {p.name for p in found[-1][2].iterdir()}
    assert names == {"model.safetensors", "state.safetensors", "state.json"}
    meta = json.loads((found[-1][2] / "state.json").read_text())
    assert (meta["kind"], meta["format"], meta["tasks_done"], meta["step"]) == (
        "retain.step_checkpoint",
        1,
        1,
        6,
    )
    assert set(meta["state"]) >= {"optimizer", "strategies", "rng", "generator", "loop"}
    assert not list((out / "checkpoints").glob(".*"))  # no temporary folder left


def test_a_damaged_newest_step_checkpoint_falls_back_to_the_one_before(two_tasks, tmp_path):
    specs = [{"name": "replay", "size": 40}]
    cfg = lambda: _cfg(keep_step_checkpoints=2)  # noqa: E731
    full = run(_mlp(), two_tasks, [*build_all(specs), CrashAt()], cfg())
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        run(_mlp(), two_tasks, [*build_all(specs), CrashAt(at=7)], cfg(), out_dir=out)
    newest = step_dirs(out / "checkpoints")[-1][2]
    (newest / "state.safetensors").write_bytes(b"cut short")
    warnings: list[str] = []
    resumed = run(
        _mlp(),
        two_tasks,
        [*build_all(specs), CrashAt()],
        cfg(),
        out_dir=out,
        resume=True,
        warn=warnings.append,
    )
    assert any("step-0000-000000006" in w and "damaged" in w for w in warnings), warnings
    _same(resumed, full)


@pytest.fixture(scope="module")
def two_step_checkpoints(two_tasks, tmp_path_factory):
    """A run stopped at step 7 of task 0 that kept its step checkpoints at steps 3 and 6."""
    out = tmp_path_factory.mktemp("stopped") / "r"
    with pytest.raises(KeyboardInterrupt):
        strategies = [*build_all([{"name": "replay", "size": 40}]), CrashAt(at=7)]
        run(_mlp(), two_tasks, strategies, _cfg(keep_step_checkpoints=2), out_dir=out)
    return out / "checkpoints"


def _cut(path):
    path.write_bytes(path.read_bytes()[:-50])


def _edit_state(path, **changes):
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: _cut(d / "model.safetensors"),
        lambda d: (d / "model.safetensors").unlink(),
        lambda d: _cut(d / "state.safetensors"),
        lambda d: (d / "state.json").write_text("{"),
        lambda d: (d / "state.json").write_bytes(b"\xff\xfe"),
        lambda d: _edit_state(d / "state.json", kind="retain.run"),
        lambda d: _edit_state(d / "state.json", format=99),
        lambda d: _edit_state(d / "state.json", step=3),
        lambda d: _edit_state(d / "state.json", tasks_done=1),
        lambda d: _edit_state(d / "state.json", state=[]),
    ],
    ids=[
        "model-cut",
        "model-missing",
        "state-cut",
        "json-broken",
        "json-not-utf8",
        "other-kind",
        "future-format",
        "other-step",
        "other-task",
        "state-not-a-dict",
    ],
)
def test_a_damaged_step_checkpoint_is_passed_over(two_step_checkpoints, tmp_path, damage):
    import shutil

    from retain.midtask import read

    root = tmp_path / "checkpoints"
    shutil.copytree(two_step_checkpoints, root)
    assert read(root, 0)["step"] == 6
    damage(root / "step-0000-000000006")
    warnings: list[str] = []
    found = read(root, 0, warnings.append)
    assert found is not None and found["step"] == 3
    assert len(warnings) == 1 and "step-0000-000000006" in warnings[0], warnings
    assert read(root, 1) is None  # none of the next task


def test_a_loader_that_cannot_save_its_place_is_refused_before_training(
    two_tasks, tmp_path, monkeypatch
):
    import retain.api

    def plain(model, data, ctx, cfg):
        return list(ctx.make_loader(data, shuffle=True)), {}

    monkeypatch.setattr(retain.api, "train_loader", plain)
    with pytest.raises(ConfigError, match="cannot save its place"):
        run(_mlp(), two_tasks, ["finetune"], _cfg(), out_dir=tmp_path / "r")


def test_checkpoint_every_needs_task_checkpoints():
    with pytest.raises(ConfigError, match="output.checkpoints"):
        RunConfig(train=TrainConfig(checkpoint_every=5), output=OutputConfig(checkpoints=False))
    RunConfig(train=TrainConfig(checkpoint_every=0), output=OutputConfig(checkpoints=False))


# ---------------------------------------------------------------- SIGKILL at random steps
# One Python process imports retain once, then runs each job in a forked child, exactly as
# `python -m retain ARGV` would run it, less the import (several seconds each on a loaded CPU,
# and 25 of them here). A job with a kill point SIGKILLs its own process (no cleanup, no atexit)
# when the run reaches that point: right after an optimizer step, or in the middle of writing a
# step checkpoint (its folder half-written). The point is in steps over the whole run
# (task * STEPS + step), so a resumed child dies at the next point wherever it resumed from.
STEPS = 12
_SERVER = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
from retain import midtask
from retain.cli import main
from retain.train import loop

STEPS = int(sys.argv[1])
kill = {"at": None, "mode": None}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

optimizer_step = loop._Stepper.optimizer_step
def stepped(self, step):
    out = optimizer_step(self, step)
    if kill["mode"] == "step" and self.ctx.task_index * STEPS + step + 1 == kill["at"]:
        die()
    return out
loop._Stepper.optimizer_step = stepped

write_json = midtask.write_json
def written(path, obj):
    if kill["mode"] == "write" and obj["tasks_done"] * STEPS + obj["step"] == kill["at"]:
        die()
    return write_json(path, obj)
midtask.write_json = written

codes = []
for job in json.loads(sys.argv[2]):
    if job["at"] is None and not job["argv"][-1] == "--resume":  # in this process: it warms up
        codes.append(main(job["argv"]))  # the imports the children then inherit
        continue
    pid = os.fork()
    if pid == 0:
        kill.update(at=job["at"], mode=job["mode"])
        code = 1
        try:
            code = main(job["argv"])
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    codes.append(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
print(json.dumps(codes))
"""


def _comparable(run_dir):
    """result.json without times and memory, and the final weights' bytes."""
    import hashlib

    d = json.loads((run_dir / "result.json").read_text())
    for key in ("timing", "memory", "started", "finished", "out_dir"):
        d.pop(key, None)
    d = json.loads(
        json.dumps(d), object_hook=lambda o: {k: v for k, v in o.items() if "seconds" not in k}
    )
    latest = json.loads((run_dir / "checkpoints" / "LATEST.json").read_text())["dir"]
    weights = (run_dir / "checkpoints" / latest / "model.safetensors").read_bytes()
    return d, hashlib.sha256(weights).hexdigest()


@pytest.mark.slow  # 25 runs in forked processes of one launched python: ~40 s
def test_sigkilled_cli_runs_resume_bit_identical(tmp_path):
    import random
    import subprocess
    import sys

    configs = {
        "ewc+der": "[{name: ewc, lam: 10.0}, {name: der, size: 40, beta: 0.5}]",
        "lwf+replay": "[{name: lwf}, {name: replay, size: 40}]",
    }
    rng = random.Random(20261202)
    jobs, killed = [], []
    for name, strategies in configs.items():
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(
            "seed: 0\n"
            "stream: {dataset: digits, scenario: split, n_tasks: 3, classes: [0, 1, 2, 3, 4, 5]}\n"
            "model: {name: mlp, hidden: [16]}\n"
            f"train: {{steps: {STEPS}, batch_size: 64, optimizer: adam, lr: 0.003, "
            "checkpoint_every: 3}\n"
            f"strategies: {strategies}\n"
            "output: {plots: false}\n"
        )
        jobs.append(
            {
                "argv": ["run", str(cfg), "--out", str(tmp_path / name), "-q"],
                "at": None,
                "mode": None,
            }
        )
        for copy in range(2):  # 5 kills each, at random steps over the run's 3 x 12
            out = tmp_path / f"{name}-killed-{copy}"
            argv = ["run", str(cfg), "--out", str(out), "-q"]
            for k, at in enumerate(sorted(rng.sample(range(1, 3 * STEPS), 5))):
                mode = "write" if at % 3 == 0 and rng.random() < 0.5 else "step"
                jobs.append({"argv": argv + (["--resume"] if k else []), "at": at, "mode": mode})
            jobs.append({"argv": argv + ["--resume"], "at": None, "mode": None})
            killed.append((name, out))
    proc = subprocess.run(
        [sys.executable, "-c", _SERVER, str(STEPS), json.dumps(jobs)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = [0 if job["at"] is None else -9 for job in jobs]
    assert codes == expected, (codes, proc.stderr[-3000:])
    assert codes.count(-9) == 20
    for name, out in killed:
        assert _comparable(out) == _comparable(tmp_path / name), name
        assert step_dirs(out / "checkpoints") == []
        assert not list((out / "checkpoints").glob(".*"))
