"""A user's own files: paths in a config are relative to the config, a missing file says where it
was looked for, and a run that failed before saving anything leaves no folder behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from retain.cli import main
from retain.config import load_config
from retain.errors import RetainError

CONFIG = """\
stream: {{scenario: files, files: [{a}, {b}], target: label}}
model: {{name: mlp, hidden: [8]}}
train: {{epochs: 1, batch_size: 16}}
output: {{plots: false, checkpoints: false}}
"""


def _data(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("a.csv", "b.csv"):
        rows = ["x1,x2,label"] + [f"{i % 7},{i % 5},{i % 2}" for i in range(40)]
        (folder / name).write_text("\n".join(rows) + "\n")


def _err(capsys) -> str:
    return capsys.readouterr().err.strip()


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    project = tmp_path / "project"
    _data(project / "data")
    cfg = project / "exp.yaml"
    cfg.write_text(CONFIG.format(a="data/a.csv", b="data/b.csv"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = load_config(cfg)
    assert loaded.stream.options.files == [
        str(project / "data" / "a.csv"),
        str(project / "data" / "b.csv"),
    ]
    assert main(["run", str(cfg), "--out", "r", "-q"]) == 0
    # A path given on the command line stays relative to the working directory.
    (elsewhere / "c.csv").write_text((project / "data" / "a.csv").read_text())
    assert load_config(cfg, ["stream.files.1=c.csv"]).stream.options.files[1] == "c.csv"
    # Built-in names are not paths.
    (project / "d.yaml").write_text("stream: {dataset: digits}\n")
    assert load_config(project / "d.yaml").stream.dataset == "digits"


def test_missing_file_says_where_it_was_looked_for(tmp_path, capsys, monkeypatch):
    _data(tmp_path)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(CONFIG.format(a="a.csv", b="nowhere/b.csv"))
    assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "-q"]) == 2
    err = _err(capsys)
    assert str(tmp_path / "nowhere" / "b.csv") in err and "looked for" in err
    monkeypatch.chdir(tmp_path)
    assert main(["run", "nope.yaml"]) == 2
    assert str(tmp_path / "nope.yaml") in _err(capsys)


@pytest.mark.parametrize("command", ["run", "compare"])
def test_a_run_that_failed_on_its_data_can_be_retried(tmp_path, capsys, command):
    _data(tmp_path)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(CONFIG.format(a="a.csv", b="b2.csv"))
    out = tmp_path / "r"
    argv = [command, str(cfg), "--out", str(out), "-q"]
    argv += ["--strategies", "finetune"] if command == "compare" else []
    assert main(argv) == 2 and "b2.csv" in _err(capsys)
    assert not out.exists()
    (tmp_path / "b.csv").rename(tmp_path / "b2.csv")
    assert main(argv) == 0, _err(capsys)
    assert (out / "result.json").is_file()


def test_a_failure_before_anything_was_saved_removes_only_a_folder_it_made(
    tmp_path, capsys, monkeypatch
):
    import retain.run_state

    def broken(train, run_dir=None):
        raise RetainError("no device")

    _data(tmp_path)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(CONFIG.format(a="a.csv", b="b.csv"))
    monkeypatch.setattr(retain.run_state, "make_accelerator", broken)
    out = tmp_path / "r"
    assert main(["compare", str(cfg), "--out", str(out), "--strategies", "finetune", "-q"]) == 2
    assert "no device" in _err(capsys) and not out.exists()
    # A folder that was there before is the user's: it is kept, with what it holds.
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["run", str(cfg), "--out", str(out / "sub"), "-q"]) == 2
    assert (out / "notes.txt").read_text() == "mine" and not (out / "sub").exists()
    (out / "kept").mkdir()
    assert main(["run", str(cfg), "--out", str(out / "kept"), "-q"]) == 2
    assert (out / "kept" / "config.resolved.yaml").is_file()
