"""Bad inputs to the compare report across run directories and to the experiment trackers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from refusal import BASE, put, refused

from retain.train import tracking

FIXTURE = Path(__file__).parents[1] / "report" / "fixtures" / "v1-run" / "result.json"


def _run_dir(folder: Path, **changes) -> Path:
    """A finished run directory (an old demo run's result.json), with top-level keys changed."""
    folder.mkdir(parents=True)
    data = json.loads(FIXTURE.read_text())
    data.update(changes)
    (folder / "result.json").write_text(json.dumps(data))
    return folder


# (what is wrong, how the second directory and --out are made, words the refusal holds)
REPORT_CASES = {
    "several dirs without --out": (None, "none", "give --out DIR"),
    "--out is one of the dirs": (None, "first", "is one of the run directories"),
    "--out holds another run": (None, "run", "holds a run's result.json"),
    "different tasks": ({"tasks": ["t1", "t9"]}, "new", "has tasks t1, t9"),
    "different score": ({"score": "loss"}, "new", "has score loss"),
    "different split": ({"split": "val"}, "new", "has evaluation split val"),
    "second dir has no result.json": ("missing", "new", "not found"),
}


@pytest.mark.parametrize("case", list(REPORT_CASES), ids=list(REPORT_CASES))
def test_compare_report_refusals(case, capsys, tmp_path):
    changes, out_kind, needle = REPORT_CASES[case]
    a = _run_dir(tmp_path / "a")
    if changes == "missing":
        b = tmp_path / "b"
        b.mkdir()
    else:
        b = _run_dir(tmp_path / "b", **(changes or {}))
    argv = ["report", str(a), str(b), "--no-plots", "-q"]
    out = tmp_path / "out"
    if out_kind == "first":
        out = a
    elif out_kind == "run":
        out = _run_dir(tmp_path / "other")
    if out_kind != "none":
        argv += ["--out", str(out)]
    refused(capsys, argv, needle, keep=[tmp_path])
    if out_kind == "new":
        assert not out.exists()  # nothing made before the refusal


def test_single_dir_report_into_another_run_is_refused(capsys, tmp_path):
    a, other = _run_dir(tmp_path / "a"), _run_dir(tmp_path / "other")
    refused(
        capsys,
        ["report", str(a), "--out", str(other)],
        "holds a run's result.json",
        keep=[tmp_path],
    )


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("tensorbord", "train.log_with must be one of tensorboard, mlflow, wandb"),
        ("[tensorboard, neptune]", "train.log_with must be one of"),
        ("3", "train.log_with must be one of"),
    ],
)
def test_log_with_names_are_checked(value, needle, capsys, tmp_path):
    cfg = put(tmp_path, "exp.yaml", BASE)
    out = tmp_path / "run"
    refused(
        capsys, ["run", str(cfg), "--out", str(out), f"train.log_with={value}"], needle, keep=[cfg]
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "install"),
    [
        ("mlflow", "pip install mlflow"),
        ("wandb", "pip install wandb"),
        ("tensorboard", "pip install 'retain[track]'"),
    ],
)
def test_a_missing_tracker_is_one_line_naming_the_install(
    name, install, capsys, tmp_path, monkeypatch
):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(
        tracking.importlib.util, "find_spec", lambda m: None if m == name else real(m)
    )
    cfg = put(tmp_path, "exp.yaml", BASE)
    out = tmp_path / "run"
    refused(
        capsys,
        ["run", str(cfg), "--out", str(out), f"train.log_with={name}"],
        f"needs the {name} package",
        install,
        keep=[cfg],
    )
    assert not out.exists()
