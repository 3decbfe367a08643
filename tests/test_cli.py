"""The command line, in-process through main([...]): each bad input is one line, exit code 2,
no traceback, and nothing in an existing run directory is lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from retain.cli import main


def _cfg(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = """\
seed: 0
stream: {dataset: digits, scenario: split, n_tasks: 2, classes: [0, 1, 2, 3]}
model: {name: mlp, hidden: [32]}
train: {epochs: 1, batch_size: 64, optimizer: adam, lr: 0.001}
output: {plots: false}
"""


def _fails(capsys, argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("retain: error: ")
    for n in needles:
        assert n in err, err
    return err


def test_run_writes_a_complete_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(_cfg(tmp_path, BASE)), "--out", str(out), "-q"]) == 0
    for name in ("config.resolved.yaml", "result.json", "metrics.csv", "report.md", "report.html"):
        assert (out / name).is_file(), name
    rec = json.loads((out / "result.json").read_text())
    assert rec["kind"] == "run" and rec["status"] == "complete" and rec["schema_version"] == 1
    assert len(rec["matrix"]) == 3 and set(rec["metrics"]) >= {
        "avg_accuracy",
        "bwt",
        "fwt",
        "forgetting",
        "plasticity",
    }
    assert "avg" in capsys.readouterr().out.lower()
    # The resolved config alone reproduces the run.
    again = tmp_path / "again"
    assert main(["run", str(out / "config.resolved.yaml"), "--out", str(again), "-q"]) == 0
    assert json.loads((again / "result.json").read_text())["matrix"] == rec["matrix"]


def test_overrides_may_come_after_flags(tmp_path):
    out = tmp_path / "r"
    assert (
        main(
            ["run", str(_cfg(tmp_path, BASE)), "--out", str(out), "-q", "train.epochs=2", "seed=5"]
        )
        == 0
    )
    cfg = (out / "config.resolved.yaml").read_text()
    assert "epochs: 2" in cfg and "seed: 5" in cfg


def test_unknown_key(tmp_path, capsys):
    cfg = _cfg(tmp_path, BASE + "trian: {}\n")
    _fails(
        capsys,
        ["run", str(cfg), "-q", "--out", str(tmp_path / "o")],
        "unknown key 'trian'",
        "did you mean 'train'",
    )
    _fails(
        capsys,
        ["run", str(_cfg(tmp_path, BASE, "b.yaml")), "-q", "train.lrr=1"],
        "unknown key 'train.lrr'",
        "did you mean 'lr'",
    )


def test_wrong_type(tmp_path, capsys):
    _fails(
        capsys,
        ["run", str(_cfg(tmp_path, BASE)), "-q", "train.epochs=many"],
        "train.epochs must be an integer",
    )


def test_unknown_strategy_and_hyperparameter(tmp_path, capsys):
    cfg = _cfg(tmp_path, BASE)
    _fails(
        capsys,
        ["run", str(cfg), "-q", "strategies.0.name=finetun"],
        "unknown strategy 'finetun'",
        "did you mean 'finetune'",
    )
    _fails(
        capsys,
        ["compare", str(cfg), "-q", "--strategies", "finetune,jiont"],
        "unknown strategy 'jiont'",
    )


def test_missing_data_file(tmp_path, capsys):
    _fails(
        capsys,
        [
            "run",
            str(_cfg(tmp_path, BASE)),
            "-q",
            "--out",
            str(tmp_path / "o"),
            "stream.dataset=nowhere/data.csv",
            "stream.scenario=iid",
        ],
        "nowhere/data.csv",
    )


def test_missing_config_file(tmp_path, capsys):
    _fails(capsys, ["run", str(tmp_path / "nope.yaml")], "config file", "not found")


def _csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


TABLE = """\
seed: 0
stream: {{dataset: {data}, target: label, scenario: {scenario}{extra}}}
model: {{name: mlp, hidden: [8]}}
train: {{epochs: 1, batch_size: 8}}
output: {{plots: false}}
"""


def test_labels_out_of_range(tmp_path, capsys):
    data = _csv(
        tmp_path / "d.csv", ["a,b,label"] + [f"{i},{i % 3},{(i % 3) - 1}" for i in range(30)]
    )
    cfg = _cfg(tmp_path, TABLE.format(data=data, scenario="iid", extra=""))
    _fails(
        capsys, ["run", str(cfg), "-q", "--out", str(tmp_path / "o")], "class label -1 is negative"
    )


def test_one_stray_label_does_not_build_a_million_way_head(tmp_path, capsys):
    """A label of 1000000 among 0s and 1s built a 1,000,001-way output layer and trained for
    minutes before anyone noticed."""
    rows = [f"{i},{i % 3},{i % 2}" for i in range(30)]
    rows[7] = "7,1,1000000"
    data = _csv(tmp_path / "d.csv", ["a,b,label", *rows])
    cfg = _cfg(tmp_path, TABLE.format(data=data, scenario="iid", extra=""))
    _fails(
        capsys,
        ["run", str(cfg), "-q", "--out", str(tmp_path / "o")],
        "class label 1000000 would make a 1000001-way output layer for 3 distinct labels",
    )


def test_nan_in_inputs(tmp_path, capsys):
    import numpy as np

    rows = ["a,b,label"] + [f"{i},{'nan' if i == 7 else i},{i % 2}" for i in range(40)]
    cfg = _cfg(
        tmp_path, TABLE.format(data=_csv(tmp_path / "d.csv", rows), scenario="iid", extra="")
    )
    _fails(capsys, ["run", str(cfg), "-q", "--out", str(tmp_path / "o")], "column 'b'", "missing")
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    x[5, 1] = np.inf
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 2)
    cfg = _cfg(tmp_path, TABLE.format(data=tmp_path / "d.npz", scenario="iid", extra=""), "n.yaml")
    _fails(
        capsys,
        ["run", str(cfg), "-q", "--out", str(tmp_path / "o2"), "stream.target=null"],
        "NaN or inf in 1 sample",
    )


def test_feature_shapes_disagree(tmp_path, capsys):
    a = _csv(tmp_path / "jan.csv", ["a,b,label"] + [f"{i},{i},{i % 2}" for i in range(20)])
    b = _csv(tmp_path / "feb.csv", ["a,b,c,label"] + [f"{i},{i},{i},{i % 2}" for i in range(20)])
    cfg = _cfg(
        tmp_path, TABLE.format(data="unused", scenario="files", extra=f", files: [{a}, {b}]")
    )
    _fails(
        capsys,
        ["run", str(cfg), "-q", "--out", str(tmp_path / "o")],
        "has the feature columns a, b, c but",
    )


def test_empty_task(tmp_path, capsys):
    rows = ["a,site,label"] + [f"{i},{'x' if i % 2 else 'y'},{i % 2}" for i in range(40)]
    cfg = _cfg(
        tmp_path,
        TABLE.format(
            data=_csv(tmp_path / "d.csv", rows),
            scenario="by_column",
            extra=", column: site, groups: [x, z]",
        ),
    )
    _fails(capsys, ["run", str(cfg), "-q", "--out", str(tmp_path / "o")], "site=z", "empty")


def test_existing_run_dir_without_resume_loses_nothing(tmp_path, capsys):
    cfg = _cfg(tmp_path, BASE)
    out = tmp_path / "r"
    assert main(["run", str(cfg), "--out", str(out), "-q"]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _fails(capsys, ["run", str(cfg), "--out", str(out), "-q"], "already exists", "--resume")
    _fails(
        capsys,
        ["compare", str(cfg), "--strategies", "finetune", "--out", str(out), "-q"],
        "already exists",
    )
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_debug_shows_the_traceback(tmp_path):
    from retain.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["run", str(_cfg(tmp_path, BASE + "trian: {}\n")), "--debug"])


def test_flags_before_the_command_take_effect(tmp_path):
    """``retain --debug run`` and ``retain -q run`` were accepted and ignored: the command's own
    parser reset both flags to False."""
    from retain.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["--debug", "run", str(_cfg(tmp_path, BASE + "trian: {}\n"))])
    from retain.cli import build_parser

    for argv in (["-q", "run", "x.yaml"], ["run", "-q", "x.yaml"], ["--quiet", "report", "d"]):
        assert build_parser().parse_known_args(argv)[0].quiet, argv
    assert not build_parser().parse_known_args(["run", "x.yaml"])[0].quiet


@pytest.mark.parametrize("seed", ["99999999999999999999999", "-1", "4294967296", "[1,99999999999]"])
def test_seeds_out_of_range(tmp_path, capsys, seed):
    """A seed past 2^63 ended in an OverflowError traceback; seeds are 32-bit (the per-task
    generators use the low 32 bits, so larger seeds could alias)."""
    key = "seeds" if seed.startswith("[") else "seed"
    _fails(
        capsys,
        ["run", str(_cfg(tmp_path, BASE)), "-q", f"{key}={seed}"],
        f"{key} must be in [0, 4294967295]",
    )


def test_duplicate_key_and_bad_encoding(tmp_path, capsys):
    """A key given twice was last-one-wins in silence; a config that is not UTF-8 ended in a
    UnicodeDecodeError traceback."""
    twice = BASE.replace("lr: 0.001}", "lr: 0.001, lr: 0.1}")
    _fails(capsys, ["run", str(_cfg(tmp_path, twice)), "-q"], "key 'lr' is given twice", "keep one")
    lines = BASE + "seed: 3\n"
    _fails(
        capsys,
        ["run", str(_cfg(tmp_path, lines)), "-q"],
        "key 'seed' is given twice (lines 1 and 6)",
    )
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(BASE.encode() + "name: caf\xe9\n".encode("latin-1"))
    _fails(capsys, ["run", str(bad), "-q"], "is not UTF-8 text", "save it as UTF-8")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # a subprocess that imports torch and starts training
def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    """SIGTERM (a scheduler's time limit) killed the process mid-run with no word; now it stops
    like Ctrl-C: one line, exit 143, and the folder is left for --resume."""
    import signal
    import time

    long = BASE.replace("epochs: 1", "epochs: 100000")
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "retain", "run", str(_cfg(tmp_path, long)), "-q", "--out", str(out)],
        stderr=subprocess.PIPE,
        text=True,
    )
    started = out / "config.resolved.yaml"  # written when training is about to start
    deadline = time.monotonic() + 120
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None, "the run ended before it was sent SIGTERM"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == [
        "retain: terminated (SIGTERM); the last finished task's checkpoint is kept: "
        "rerun with --resume"
    ], err
    assert started.is_file()


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    """/proc refuses new folders even to root: the run ended in a FileNotFoundError traceback."""
    blocked = tmp_path / "ro"
    blocked.mkdir()
    (blocked / "f").write_text("")
    _fails(
        capsys,
        ["run", str(_cfg(tmp_path, BASE)), "-q", "--out", str(blocked / "f" / "run")],
        "is a file",
    )
    if Path("/proc/self").exists():
        _fails(
            capsys,
            ["run", str(_cfg(tmp_path, BASE)), "-q", "--out", "/proc/retain-run"],
            "cannot make the run directory '/proc/retain-run'",
            "choose another --out",
        )


def test_patience_without_a_validation_split_is_refused(tmp_path, capsys):
    """Early stopping was silently off when the stream had no validation split."""
    _fails(
        capsys,
        ["run", str(_cfg(tmp_path, BASE)), "-q", "train.patience=2"],
        "train.patience stops on the validation loss",
        "stream.validation=0.1",
    )
    assert not (tmp_path / "runs").exists()
    ok = BASE.replace("classes: [0, 1, 2, 3]}", "classes: [0, 1, 2, 3], validation: 0.2}")
    assert (
        main(
            ["run", str(_cfg(tmp_path, ok)), "-q", "train.patience=2", "--out", str(tmp_path / "r")]
        )
        == 0
    )


def test_compare_report_and_strategies(tmp_path, capsys):
    cfg = _cfg(tmp_path, BASE)
    out = tmp_path / "cmp"
    assert (
        main(["compare", str(cfg), "--strategies", "finetune,joint", "--out", str(out), "-q"]) == 0
    )
    rec = json.loads((out / "result.json").read_text())
    assert rec["kind"] == "compare" and list(rec["runs"]) == ["finetune", "joint"]
    ft, jt = rec["runs"]["finetune"], rec["runs"]["joint"]
    assert ft["metrics"]["gap_to_joint"] == pytest.approx(
        jt["metrics"]["avg_accuracy"] - ft["metrics"]["avg_accuracy"]
    )
    text = capsys.readouterr().out
    assert "joint" in text and "finetune" in text
    (out / "report.md").unlink()
    assert main(["report", str(out), "-q"]) == 0
    assert (out / "report.md").is_file()
    assert main(["strategies"]) == 0
    listing = capsys.readouterr().out
    for name in ("finetune", "joint", "cumulative"):
        assert f"{name}:" in listing
    _fails(capsys, ["report", str(tmp_path / "none")], "result.json", "not found")


def test_demo_shows_finetune_forgetting_and_joint_not(tmp_path, capsys):
    # Its speed ("well under a minute") is measured in bench/, not asserted here.
    assert main(["demo", "--out", str(tmp_path / "demo"), "-q"]) == 0
    rec = json.loads((tmp_path / "demo" / "result.json").read_text())
    ft, jt = rec["runs"]["finetune"]["metrics"], rec["runs"]["joint"]["metrics"]
    assert jt["avg_accuracy"] > 0.85 and ft["avg_accuracy"] < 0.35 and ft["bwt"] < -0.5
    # Every task is learnt before the next: the loss measured is forgetting, not under-training.
    assert min(ft["plasticity_per_task"]) > 0.85


def test_help_imports_no_torch():
    """`retain --help` stays quick because nothing heavy is imported before a command runs
    (timed in bench/bench_throughput.py; here the cause is checked, which does not depend on load)."""
    code = (
        "import sys; from retain.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'accelerate', 'numpy', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_cnn_model_from_the_config(tmp_path):
    out = tmp_path / "cnn"
    assert (
        main(
            [
                "run",
                str(_cfg(tmp_path, BASE)),
                "--out",
                str(out),
                "-q",
                "model.name=cnn",
                "model.channels=[8, 16]",
                "train.epochs=2",
            ]
        )
        == 0
    )
    rec = json.loads((out / "result.json").read_text())
    assert rec["matrix"][1][0] > 0.9  # a 2-class digits task is learnt by the CNN


def test_an_interrupted_study_does_not_suggest_resume(monkeypatch, capsys):
    """Ctrl-C in `retain study` said "rerun with --resume", which a study does not have."""
    import retain.cli as cli

    def stop(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_study", stop)
    assert main(["study", "iid"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == "retain: interrupted; this command does not resume: run it again", err
