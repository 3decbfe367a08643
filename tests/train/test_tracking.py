"""Experiment trackers: a tiny run writes TensorBoard events that read back as what it logged."""

from __future__ import annotations

import pytest
from torch import nn

from retain import api
from retain.config import RunConfig, TrainConfig, load_config
from retain.errors import ConfigError
from retain.train import tracking


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list(folder.glob("events.out.tfevents.*")), f"no event file in {folder}"
    acc = EventAccumulator(str(folder))  # this folder's files (hparams are in a subfolder)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# Importing tensorboard's writer and reader alone takes 5 to 15 s of a loaded 2-core machine.
@pytest.mark.slow
def test_tensorboard_logs_loss_lr_rows_and_metrics(tiny_stream, tmp_path):
    pytest.importorskip("tensorboard")
    stream = tiny_stream
    cfg = RunConfig(
        name="tiny",
        train=TrainConfig(
            steps=30, batch_size=16, lr=0.05, schedule="cosine", log_with="tensorboard"
        ),
    )
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 6))
    result = api.run(model, stream, ["finetune"], cfg, out_dir=tmp_path / "run")
    logs = tmp_path / "run" / "logs"
    s = _scalars(logs / "tiny")
    n = len(stream.tasks)
    # The loss every LOG_EVERY steps and at each task's end, on one axis over the whole stream.
    steps = [step for step, _ in s["train/loss"]]
    assert steps == sorted(steps) and steps[-1] == 30 * n
    assert len(steps) == 2 * n  # steps 25 and 30 of each task
    # The learning rate: lr times the schedule's factor, as the record's curves hold it.
    factors = [f for task in result.record.curves.lr_factor for _, f in task]
    assert [v for _, v in s["train/lr"]] == pytest.approx([0.05 * f for f in factors])
    assert factors[0] > factors[1] > 0  # the cosine schedule moved it
    # Each row of R at the step it was taken: row 0 at step 0, row i after task i.
    R = result.matrix
    for j, task in enumerate(stream.task_names):
        got = s[f"R/{task}"]
        assert [step for step, _ in got] == [30 * i for i in range(n + 1)]
        assert [v for _, v in got] == pytest.approx([row[j] for row in R], abs=1e-6)
    assert dict(s["metrics/avg_accuracy"])[30 * n] == pytest.approx(
        result.metrics.avg_accuracy, abs=1e-6
    )
    assert dict(s["metrics/bwt"])[30 * n] == pytest.approx(result.metrics.bwt, abs=1e-6)


def test_tracking_is_off_by_default(tiny_stream, tmp_path):
    cfg = RunConfig(train=TrainConfig(steps=2, batch_size=16))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 6))
    api.run(model, tiny_stream, ["finetune"], cfg, out_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "logs").exists()


def test_log_with_names_and_logging_dir(tmp_path):
    cfg = load_config(None, ["train.log_with=[tensorboard, tensorboard]"])
    assert tracking.names(cfg.train) == ["tensorboard"]
    assert tracking.logging_dir(cfg.train, tmp_path) == tmp_path / "logs"
    cfg = load_config(None, ["train.log_with=mlflow", f"train.logging_dir={tmp_path / 'x'}"])
    assert tracking.logging_dir(cfg.train, tmp_path) == tmp_path / "x"
    with pytest.raises(ConfigError, match="train.log_with must be one of tensorboard"):
        load_config(None, ["train.log_with=tensorbord"])


def test_a_missing_tracker_package_is_refused_before_the_run(tiny_stream, tmp_path, monkeypatch):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(
        tracking.importlib.util, "find_spec", lambda m: None if m == "wandb" else real(m)
    )
    cfg = RunConfig(train=TrainConfig(steps=2, log_with=["wandb"]))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 6))
    with pytest.raises(ConfigError, match="needs the wandb package.*pip install wandb"):
        api.run(model, tiny_stream, ["finetune"], cfg, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
