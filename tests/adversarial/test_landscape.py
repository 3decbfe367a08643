"""Bad inputs to ``retain landscape``: refused in one line, exit 2, every run directory intact."""

from __future__ import annotations

import pytest
from refusal import BASE, put, refused

from retain.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny finished runs: one task, two tasks (only the last checkpoint kept), two tasks with
    every checkpoint kept, and the joint reference."""
    root = tmp_path_factory.mktemp("landscape-bad")
    cfg = str(put(root, "c.yaml", BASE))
    made = {
        "one": ["stream.n_tasks=1", "stream.classes=[0,1]"],
        "plain": [],
        "kept": ["output.keep_checkpoints=2"],
        "joint": ["strategies.0.name=joint"],
    }
    for name, overrides in made.items():
        assert main(["run", cfg, *overrides, "--out", str(root / name), "-q"]) == 0
    (root / "empty").mkdir()
    return root


CASES = [
    (["{root}/missing"], ["is not a folder"]),
    (["{root}/empty"], ["is not a run directory"]),
    (["{root}/one", "--joint", "{root}/joint"], ["trained one task", "--random"]),
    (["{root}/joint"], ["all tasks at once"]),
    (["{root}/kept"], ["no joint model", "--train-joint"]),
    (
        ["{root}/plain", "--joint", "{root}/joint"],
        ["no parameters after task 1", "output.snapshots"],
    ),
    (["{root}/plain", "--train-joint"], ["no parameters after task 1"]),
    (["{root}/kept", "--joint", "{root}/joint", "--path"], ["no snapshots", "output.snapshots"]),
    (["{root}/kept", "--joint", "{root}/joint", "--tasks", "2,1"], ["1 <= i < j <= 2"]),
    (["{root}/kept", "--joint", "{root}/joint", "--tasks", "1,3"], ["1 <= i < j <= 2"]),
    (["{root}/kept", "--joint", "{root}/joint", "--tasks", "x"], ["two task numbers"]),
    (["{root}/kept", "--joint", "{root}/kept"], ["is not a joint run"]),
    (["{root}/kept", "--joint", "{root}/empty"], ["is not a run directory"]),
    (["{root}/kept", "--joint", "{root}/joint", "--split", "val"], ["no val split"]),
    (["{root}/kept", "--joint", "{root}/joint", "--split", "dev"], ["--split must be one of"]),
    (["{root}/kept", "--joint", "{root}/joint", "--grid", "1"], ["--grid must be at least 3"]),
    (["{root}/kept", "--joint", "{root}/joint", "--samples", "0"], ["--samples at least 1"]),
    (["{root}/kept", "--run", "finetune"], ["--run picks a run of a comparison"]),
]


@pytest.mark.parametrize(
    ("argv", "needles"), CASES, ids=[" ".join(c[0][1:]) or c[0][0] for c in CASES]
)
def test_bad_landscape_input_is_one_line(runs, capsys, argv, needles):
    args = ["landscape", *(a.format(root=runs) for a in argv), "-q"]
    refused(capsys, args, *needles, keep=[runs / n for n in ("one", "plain", "kept", "joint")])
    assert not (runs / "kept" / "landscape").exists()
