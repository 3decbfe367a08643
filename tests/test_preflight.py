"""Everything that can be checked before training is checked before the first step of the first
run: every strategy of every label against the stream's objective and setting (declared by the
strategies: ``Strategy.unsupported`` and ``Strategy.check``), the data, the output folder. A
refusal is one line, exit code 2, and leaves no folder behind."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest

from retain import strategies as registry
from retain.cli import main
from retain.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "regression_two_domains.yaml"
REGRESSION = SimpleNamespace(objective="regression", setting="domain_il", tasks=("a", "b"))


def _example_command() -> list[str]:
    """The comment's command that compares every strategy that applies to regression."""
    lines = [ln.lstrip("# ").strip() for ln in EXAMPLE.read_text().splitlines()]
    cmds = [ln for ln in lines if ln.startswith("retain compare") and "ewc" in ln]
    assert len(cmds) == 1, cmds
    return shlex.split(cmds[0])[1:]


def _labels(argv: list[str]) -> list[str]:
    return argv[argv.index("--strategies") + 1].split(",")


def _applies(name: str) -> bool:
    try:
        registry.build(name).check(REGRESSION)
    except ConfigError:
        return False
    return True


def test_the_example_lists_every_strategy_that_applies_to_regression():
    listed = set(_labels(_example_command()))
    assert listed == {n for n in registry.available() if _applies(n)}
    assert {"lwf", "generative_replay"}.isdisjoint(listed)


@pytest.mark.parametrize(
    "label, needles",
    [
        ("lwf", ("'lwf'", "regression", "use der")),
        ("generative_replay", ("'generative_replay'", "regression", "use replay")),
        ("ewc:fisher=sampled", ("'ewc'", "fisher 'sampled'", "use fisher=empirical")),
        ("ewc:fisher=empirical_weighted", ("'ewc'", "use fisher=empirical")),
        ("replay:policy=class_balanced", ("'replay'", "class_balanced", "policy=reservoir")),
        ("ewc+lwf", ("'lwf'", "use der")),
    ],
)
def test_a_strategy_that_does_not_apply_is_refused_before_training(
    tmp_path, capsys, monkeypatch, label, needles
):
    import retain.api

    def no_training(*a, **k):
        raise AssertionError("trained before the strategies were checked")

    monkeypatch.setattr(retain.api, "run", no_training)
    out = tmp_path / "cmp"
    argv = ["compare", str(EXAMPLE), "--strategies", f"finetune,{label}", "--out", str(out), "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("retain: error: strategy "), err
    for n in needles:
        assert n in err, err
    assert not out.exists()


def test_an_output_folder_that_cannot_be_made_is_refused_before_training(
    tmp_path, capsys, monkeypatch
):
    import retain.api

    monkeypatch.setattr(retain.api, "run", lambda *a, **k: pytest.fail("trained"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    argv = ["compare", str(EXAMPLE), "--strategies", "finetune", "--out", str(blocker / "x")]
    assert main([*argv, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file" in err, err


@pytest.mark.slow
def test_the_regression_example_compares_every_strategy_that_applies(tmp_path):
    argv = _example_command()
    out = tmp_path / "cmp"
    assert main([*argv, "train.epochs=1", "--out", str(out), "-q"]) == 0
    rec = json.loads((out / "result.json").read_text())
    assert list(rec["runs"]) == _labels(argv)
    assert all(r["status"] == "complete" for r in rec["runs"].values())
    ewc_stats = rec["runs"]["ewc"]["strategy_stats"]
    # A Fisher after every task but the last (nothing would use the last one).
    assert [s["ewc"].get("fisher") for s in ewc_stats] == ["empirical"] * (len(ewc_stats) - 1) + [
        None
    ]


def test_strategy_check_is_declared_not_special_cased():
    """The runner holds no strategy names: applicability is each strategy's declaration."""
    text = (ROOT / "src" / "retain" / "runner.py").read_text()
    assert not re.search(r"['\"](lwf|generative_replay|ewc|replay)['\"]", text)
    assert "regression" in registry.get("lwf").unsupported


def test_run_refuses_an_inapplicable_strategy_before_training(tmp_path, capsys, monkeypatch):
    import retain.api

    monkeypatch.setattr(retain.api, "run", lambda *a, **k: pytest.fail("trained"))
    out = tmp_path / "run"
    assert main(["run", str(EXAMPLE), "strategies.0.name=lwf", "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "strategy 'lwf' does not apply" in err, err
    assert not out.exists()


def test_the_python_api_checks_every_strategy_before_training(tmp_path):
    from dataclasses import dataclass

    import torch

    from retain.api import run
    from retain.config import RunConfig
    from retain.data.stream import Stream, Task, TensorData
    from retain.errors import Unsupported
    from retain.strategies.base import Strategy

    @dataclass
    class ClassesOnly(Strategy):  # declares its limit only: no setup() of its own
        unsupported = {"regression": "use finetune"}  # a class attribute, not a field

    data = TensorData(x=torch.randn(20, 3), y=torch.randn(20, 1))
    stream = Stream(
        (Task("a", data, data),), objective="regression", n_outputs=1, setting="domain_il"
    )
    with pytest.raises(Unsupported, match="regression"):
        run(torch.nn.Linear(3, 1), stream, [ClassesOnly()], RunConfig(), out_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "label, overrides, needles",
    [
        (
            "freeze",
            ["strategies.0.name=freeze", "strategies.0.trainable=[nope.*]"],
            ("freeze", "'nope.*' matches no parameter"),
        ),
        ("progressive", ["model.name=cnn"], ("'progressive' supports MLP-shaped models",)),
        ("parallel", ["model.name=cnn"], ("'parallel' supports MLP-shaped models",)),
    ],
)
def test_a_strategy_that_cannot_work_on_the_model_is_refused_before_training(
    tmp_path, capsys, monkeypatch, label, overrides, needles
):
    """Checks that need the model (its layers, its parameter names) run on the freshly built
    model before the first strategy trains, not when the failing strategy's turn comes."""
    import retain.api

    monkeypatch.setattr(retain.api, "run", lambda *a, **k: pytest.fail("trained"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "stream: {dataset: digits, scenario: split, n_tasks: 2, classes: [0, 1, 2, 3]}\n"
        "model: {channels: [4]}\n"
    )
    out = tmp_path / "cmp"
    argv = ["compare", str(cfg), "--strategies", f"finetune,{label}", "--out", str(out), "-q"]
    assert main([*argv, *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    assert not out.exists()


def test_the_python_api_checks_the_model_before_training(tmp_path):
    import torch

    from retain.api import run
    from retain.config import RunConfig
    from retain.data.stream import Stream, Task, TensorData
    from retain.errors import Unsupported
    from retain.strategies.freeze import Freeze

    data = TensorData(x=torch.randn(20, 3), y=torch.randint(0, 2, (20,)))
    stream = Stream((Task("a", data, data),), n_outputs=2)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(Unsupported, match="matches no parameter"):
        run(
            model,
            stream,
            [Freeze(trainable=["x*"], from_task=0)],
            RunConfig(),
            out_dir=tmp_path / "r",
        )
    assert not (tmp_path / "r").exists()
