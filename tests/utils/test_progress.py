"""Progress bars, read from a recording console: each bar of a comparison names its strategy and
position, an ETA covers the whole comparison, and a task that stops early ends its bar full."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from retain.config import load_config
from retain.runner import compare_config
from retain.utils.progress import Overall, RichProgress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _progress(clock: Clock | None = None) -> tuple[RichProgress, Console]:
    console = Console(record=True, width=220, file=io.StringIO())
    return RichProgress(console=console, clock=clock or Clock()), console


def _lines(console: Console) -> list[str]:
    return [line.rstrip() for line in console.export_text().splitlines() if line.strip()]


def test_an_early_stopped_bar_ends_where_training_ended():
    progress, console = _progress()
    progress.task("train t1", 1500)
    progress.advance(100, 0.5)
    progress.advance(20, None)
    progress.done()
    progress.close()
    (line,) = _lines(console)
    assert "120/120" in line and "1500" not in line


def test_bars_name_strategy_and_position_with_an_overall_eta():
    clock = Clock()
    progress, console = _progress(clock)
    progress.strategy("ewc", 2, 4, steps_left=400)
    progress.task("train t3", 100)
    clock.now = 10.0
    progress.advance(100, 0.25)  # 0.1 s a step, 300 steps left: 30 s
    progress.done()
    progress.task("eval after t3", 3)  # evaluation bars are not optimizer steps
    progress.advance(3, None)
    progress.done()
    progress.close()
    train, evaluation = _lines(console)
    assert train.startswith("ewc 2/4 · train t3 ")
    assert "all 100/400 steps, ETA 0:30" in train
    assert evaluation.startswith("ewc 2/4 · eval after t3 ")
    assert "all 100/400 steps" in evaluation


def test_overall_eta_counts_steps_against_the_plan():
    clock = Clock()
    overall = Overall(clock)
    assert overall.text() == ""  # no step done yet: no rate to estimate from
    overall.plan(1000)
    clock.now = 20.0
    overall.advance(200)
    assert overall.seconds_left() == pytest.approx(80.0)
    overall.unused(300)  # a task stopped 300 steps early
    assert overall.planned == 700
    assert overall.seconds_left() == pytest.approx(50.0)
    overall.plan(200)  # the next strategy: its plan and the rest's, counted from here
    assert overall.planned == 400
    clock.now = 3700.0
    assert overall.text() == "all 200/400 steps, ETA 1:01:40"  # 18.5 s a step, 200 steps left


CONFIG = """\
seed: 0
stream: {dataset: digits, scenario: split, n_tasks: 2, classes: [0, 1, 2, 3], validation: 0.2}
model: {name: mlp, hidden: [16]}
train: {epochs: 2, batch_size: 64, optimizer: adam, lr: 0.001}
output: {plots: false, checkpoints: false}
"""


class Recorder(RichProgress):
    """A RichProgress that also keeps what the comparison told it."""

    def __init__(self) -> None:
        super().__init__(console=Console(record=True, width=220, file=io.StringIO()))
        self.announced: list[tuple[str, int, int, int]] = []
        self.train_totals: list[int] = []

    def strategy(self, label: str, index: int, count: int, steps_left: int) -> None:
        self.announced.append((label, index, count, steps_left))
        super().strategy(label, index, count, steps_left)

    def task(self, name: str, total: int) -> None:
        if name.startswith("train "):
            self.train_totals.append(total)
        super().task(name, total)


def _compare(tmp_path, overrides: list[str]) -> Recorder:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    progress = Recorder()

    def announce(label: str, index: int, count: int, steps_left: int) -> None:
        progress.strategy(label, index, count, steps_left)

    compare_config(
        load_config(path, overrides),
        ["finetune", "joint"],
        tmp_path / "out",
        progress=progress,
        announce=announce,
    )
    progress.close()
    return progress


def test_compare_plans_exactly_the_steps_it_trains(tmp_path):
    progress = _compare(tmp_path, [])
    (ft, ft_i, n, ft_left), (jt, jt_i, _, jt_left) = progress.announced
    assert (ft, ft_i, n, jt, jt_i) == ("finetune", 1, 2, "joint", 2)
    finetune_steps, joint_steps = sum(progress.train_totals[:2]), progress.train_totals[2]
    assert len(progress.train_totals) == 3  # finetune: one bar per task; joint: one union task
    assert (ft_left, jt_left) == (finetune_steps + joint_steps, joint_steps)
    assert progress.overall is not None
    assert progress.overall.done == progress.overall.planned == ft_left
    lines = _lines(progress.console)
    assert any(line.startswith("finetune 1/2 · train ") for line in lines)
    assert any(line.startswith("joint 2/2 · train joint ") for line in lines)


def test_compare_with_early_stopping_ends_bars_and_plan_where_training_ended(tmp_path):
    progress = _compare(tmp_path, ["train.epochs=200", "train.patience=1", "train.lr=0.05"])
    assert progress.overall is not None
    assert progress.overall.done == progress.overall.planned < progress.announced[0][3]
    trains = [line for line in _lines(progress.console) if " · train " in line]
    for line in trains:
        done, total = line.split("━")[-1].split()[0].split("/")
        assert done == total  # every bar full, none frozen part-way
    assert any(int(line.split("━")[-1].split()[0].split("/")[0]) < 200 for line in trains)
