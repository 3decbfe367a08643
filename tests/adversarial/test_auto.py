"""Bad input to ``retain update`` (``--strategy auto`` above all) and ``retain gate``: one line,
exit 2, nothing trained, the package and its data unchanged."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from refusal import put, refused

from retain.cli import main

CONFIG = """\
stream: {scenario: files, files: [d1.csv], target: y}
model: {name: mlp, hidden: [8]}
train: {epochs: 1, batch_size: 16}
strategies: [{name: replay, size: 30}]
output: {plots: false}
"""


def _rows(seed: int, n: int) -> str:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = (x[:, 0] > 0).astype(int)
    return "a,b,c,y\n" + "".join(f"{a:.4f},{b:.4f},{c:.4f},{t}\n" for (a, b, c), t in zip(x, y))


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    folder = tmp_path_factory.mktemp("auto")
    put(folder, "d1.csv", _rows(0, 80))
    put(folder, "d2.csv", _rows(1, 60))
    put(folder, "tiny.csv", _rows(2, 2))
    cfg = put(folder, "c.yaml", CONFIG)
    assert main(["train", "-q", str(cfg), "--out", str(folder / "pkg")]) == 0
    return folder


CASES = {
    "trials zero": (["--strategy", "auto", "--trials", "0"], ["--trials must be at least 1"]),
    "budget zero": (["--strategy", "auto", "--budget", "0"], ["--budget must be a positive"]),
    "budget negative": (["--strategy", "auto", "--budget", "-5"], ["--budget must be a positive"]),
    "budget nan": (["--strategy", "auto", "--budget", "nan"], ["--budget", "nan"]),
    "budget inf": (["--strategy", "auto", "--budget", "inf"], ["--budget", "inf"]),
    "budget without auto": (["--budget", "60"], ["--strategy auto"]),
    "trials without auto": (["--strategy", "replay", "--trials", "3"], ["--strategy auto"]),
    "auto composed": (["--strategy", "auto+ewc"], ["stands alone"]),
    "too few rows to search": (["--strategy", "auto"], ["give more data"]),
    "max-drop nan": (["--max-drop", "nan"], ["--max-drop must be a finite number"]),
    "max-drop inf": (["--max-drop", "inf"], ["--max-drop must be a finite number"]),
    "max-nfr nan": (["--max-nfr", "nan"], ["--max-nfr must be a finite number"]),
    "max-nfr negative": (["--max-nfr", "-0.1"], ["from 0 to 1"]),
    "max-nfr above one": (["--max-nfr", "5"], ["from 0 to 1"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_update_refuses(pkg, capsys, case):
    flags, needles = CASES[case]
    data = pkg / ("tiny.csv" if case == "too few rows to search" else "d2.csv")
    out = pkg / "new"
    argv = ["update", "-q", str(pkg / "pkg"), "--data", str(data), "--out", str(out), *flags]
    refused(capsys, argv, *needles, keep=[pkg / "pkg", data])
    assert not out.exists() and not (pkg / "new.rejected").exists()


def test_auto_without_optuna_is_one_line(pkg, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    argv = [
        "update",
        "-q",
        str(pkg / "pkg"),
        "--data",
        str(pkg / "d2.csv"),
        "--out",
        str(pkg / "n"),
    ]
    refused(capsys, [*argv, "--strategy", "auto"], "pip install 'retain[auto]'", keep=[pkg / "pkg"])
    assert not (pkg / "n").exists()


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--max-drop", "nan"], "--max-drop must be a finite number"),
        (["--max-nfr", "inf"], "--max-nfr must be a finite number"),
        (["--max-nfr", "-1"], "from 0 to 1"),
    ],
)
def test_gate_refuses_thresholds_that_pass_or_fail_everything(pkg, capsys, flags, needle):
    # a NaN --max-drop used to pass any update, exit 0: no comparison with NaN is true
    p = str(pkg / "pkg")
    refused(capsys, ["gate", "-q", p, p, *flags], needle, keep=[pkg / "pkg"])
