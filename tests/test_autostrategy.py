"""``retain update --strategy auto``: the search reads no test data, is deterministic given its
seed, keeps to its budget, and the trial it chooses is the one trained and recorded."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("optuna")

from retain import autostrategy  # noqa: E402
from retain.cli import main  # noqa: E402
from retain.data.stream import Task, TensorData  # noqa: E402
from retain.package import Package  # noqa: E402
from retain.update import new_task  # noqa: E402

CONFIG = """\
stream: {{scenario: files, files: [d1.csv], target: y{extra}}}
model: {{name: mlp, hidden: [8]}}
train: {{epochs: 1, batch_size: 16}}
strategies: [{{name: replay, size: 30}}]
output: {{plots: false}}
"""


def _table(path: Path, seed: int, shift: float, n: int = 80) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) + shift
    y = (x[:, 0] + x[:, 1] > 2 * shift).astype(int)
    rows = ["a,b,c,y"] + [",".join(f"{v:.4f}" for v in r) + f",{c}" for r, c in zip(x, y)]
    path.write_text("\n".join(rows) + "\n")


def _package(folder: Path, extra: str = "") -> Path:
    _table(folder / "d1.csv", 0, 0.0)
    _table(folder / "d2.csv", 1, 0.5)
    cfg = folder / "c.yaml"
    cfg.write_text(CONFIG.format(extra=extra))
    assert main(["train", "-q", str(cfg), "--out", str(folder / "pkg")]) == 0
    return folder / "pkg"


@pytest.fixture(scope="module")
def with_val(tmp_path_factory):
    """A package whose tasks keep a validation split (stream.validation)."""
    return _package(tmp_path_factory.mktemp("val"), ", validation: 0.25")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return _package(tmp_path_factory.mktemp("plain"))


class Poisoned(TensorData):
    """Test data that fails the test when anything reads it."""

    def __init__(self, n: int) -> None:  # no tensors to read
        self.n = n

    @property
    def tensors(self):  # type: ignore[override]
        raise AssertionError("the search read test data")


def _poisoned_task(pkg: Path) -> tuple[Package, Task, object]:
    old = Package.open(pkg)
    cfg = old.config
    task, _, _ = new_task(old, cfg, str(pkg.parent / "d2.csv"), len(old.tasks))
    return old, dataclasses.replace(task, test=Poisoned(len(task.test))), cfg


def test_the_search_never_reads_test_data(with_val, plain, monkeypatch):
    for pkg, split in ((with_val, "val"), (plain, "test")):
        old, task, cfg = _poisoned_task(pkg)
        if split == "val":  # the earlier tasks' test data too, when they have validation data
            held = old.heldout

            def poisoned(held=held):
                return [dataclasses.replace(t, test=Poisoned(len(t.test))) for t in held()]

            monkeypatch.setattr(old, "heldout", poisoned)
        chosen, record = autostrategy.search(old, cfg, task, 1.0, 1.0, trials=3, budget=120)
        assert [e["split"] for e in record["earlier"]] == [split]
        assert len(record["trials"]) == 3
        assert all(t["error"] is None for t in record["trials"])
        val = record["validation"]
        if split == "val":  # D2's own validation split
            assert val["from"] == "validation split" and val["n"] == len(task.val)
        else:  # carved out of D2's training rows, which the trials then do not train on
            assert val["n"] + val["train"] == len(task.train) and val["n"] > 0


def _trials(record: dict) -> list[dict]:
    return [{k: v for k, v in t.items() if k != "seconds"} for t in record["trials"]]


def test_the_same_seed_gives_the_same_trials(plain):
    old = Package.open(plain)
    task, _, _ = new_task(old, old.config, str(plain.parent / "d2.csv"), 1)
    runs = [autostrategy.search(old, old.config, task, 0.02, 0.05, trials=4) for _ in range(2)]
    assert _trials(runs[0][1]) == _trials(runs[1][1])
    assert runs[0][0].to_dict() == runs[1][0].to_dict()
    other = dataclasses.replace(old.config, seed=7)
    _, record = autostrategy.search(old, other, task, 0.02, 0.05, trials=4)
    # the first trial is always the package's own setting; the sampled ones follow the seed
    assert _trials(record)[0]["label"] == _trials(runs[0][1])[0]["label"]
    assert [t["lr"] for t in record["trials"][1:]] != [t["lr"] for t in runs[0][1]["trials"][1:]]


def test_the_budget_ends_the_search_before_a_trial_that_would_pass_it(plain):
    old = Package.open(plain)
    task, _, _ = new_task(old, old.config, str(plain.parent / "d2.csv"), 1)
    now = [0.0]

    def clock() -> float:  # each trial takes 10 "seconds"; the clock is read 3 times per trial
        now[0] += 10 / 3
        return now[0]

    _, record = autostrategy.search(
        old, old.config, task, 0.02, 0.05, budget=40, trials=10, clock=clock
    )
    # after 3 trials (33 s, the start included) a 4th would end past 40 s: it does not start
    assert record["stopped_by"] == "budget" and len(record["trials"]) == 3
    _, record = autostrategy.search(old, old.config, task, 0.02, 0.05, budget=1e-9, trials=5)
    assert record["stopped_by"] == "budget" and len(record["trials"]) == 1  # one always runs


def test_the_rule_picks_the_best_score_within_the_thresholds_else_the_least_drop():
    def t(n, gain, drop, feasible, error=None):
        return {"number": n, "gain": gain, "worst_drop": drop, "feasible": feasible, "error": error}

    rows = [
        t(0, 0.5, 0.01, True),
        t(1, 0.9, 0.3, False),
        t(2, 0.6, 0.02, True),
        t(3, 0, 0, False, "x"),
    ]
    assert autostrategy.pick(rows)[0]["number"] == 2
    assert autostrategy.pareto(rows) == [0, 1, 2]
    rows = [t(0, 0.5, 0.2, False), t(1, 0.9, 0.3, False), t(2, 0.6, 0.2, False)]
    best, why = autostrategy.pick(rows)
    assert best["number"] == 2 and "smallest worst drop" in why
    assert autostrategy.pareto(rows) == [1, 2]


def test_the_chosen_trial_is_what_is_trained_and_recorded(plain, monkeypatch, capsys):
    picked = {}

    def other(trials):  # the last trial not of the package's strategy, whatever its scores
        choice = [t for t in trials if t["strategy"] != "replay"][-1]
        picked.update(choice)
        return choice, "the test's choice"

    monkeypatch.setattr(autostrategy, "pick", other)
    out = plain.parent / "auto"
    args = ["update", "-q", str(plain), "--data", str(plain.parent / "d2.csv"), "--out", str(out)]
    code = main([*args, "--strategy", "auto", "--trials", "3", "--max-drop", "1", "--max-nfr", "1"])
    assert code == 0
    printed = capsys.readouterr()
    n = picked["number"]
    assert "--strategy auto: 3 trial(s)" in printed.out and f"chosen: trial {n}" in printed.out
    assert "not carried into the new package" in " ".join(printed.err.split())
    verdict = json.loads((out / "verdict.json").read_text())
    search = verdict["search"]
    assert search["chosen"] == n and len(search["trials"]) == 3
    assert verdict["strategies"] == picked["strategies"] == search["config"]["strategies"]
    cfg = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert cfg["train"]["lr"] == picked["lr"] == search["config"]["train.lr"]
    assert [s["name"] for s in cfg["strategies"]] == [s["name"] for s in picked["strategies"]]
    meta = json.loads((out / "package.json").read_text())
    assert meta["history"][-1]["search"] == {
        "trials": 3,
        "chosen": n,
        "config": search["config"],
    }
    assert search["trials"][0]["label"].startswith("replay (ratio=0.5), lr 0.01")
    assert not (out / "search.png").exists()  # output.plots is off in this package


def test_the_trade_off_figure_goes_into_the_package(plain):
    out = plain.parent / "fig"
    args = ["update", "-q", str(plain), "--data", str(plain.parent / "d2.csv"), "--out", str(out)]
    code = main(
        [*args, "--strategy", "auto", "--trials", "2", "output.plots=true", *["--max-drop", "1"]]
    )
    assert code in (0, 1)
    dest = out if code == 0 else Path(f"{out}.rejected")
    assert (dest / "search.png").read_bytes()[:4] == b"\x89PNG"
