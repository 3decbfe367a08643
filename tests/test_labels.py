"""Hyperparameters inline in ``compare --strategies``: the grammar, binding through the configs'
binder (unknown keys refused with a suggestion), variants named by what they change (in the run
record, the report and the sub-run folder), and two labels that resolve to the same run refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retain.cli import main
from retain.config import RunConfig
from retain.errors import ConfigError
from retain.labels import LABEL_GRAMMAR, parse_label, parse_labels
from retain.runner import plan_labels, specs_for

BASE = """\
seed: 0
stream: {dataset: digits, scenario: split, n_tasks: 2, classes: [0, 1, 2, 3]}
model: {name: mlp, hidden: [16]}
train: {epochs: 1, batch_size: 64, optimizer: adam, lr: 0.001}
output: {plots: false}
"""


def test_commas_separate_labels_and_a_key_value_continues_the_component_before_it():
    assert parse_labels("finetune,ewc:lam=100,fisher=empirical,replay:size=500,joint") == [
        "finetune",
        "ewc:lam=100,fisher=empirical",
        "replay:size=500",
        "joint",
    ]
    assert parse_labels("ewc:lam=100,fisher=empirical+replay:size=500,mode=x") == [
        "ewc:lam=100,fisher=empirical+replay:size=500,mode=x"
    ]


def test_a_parameter_binds_to_the_component_it_follows():
    assert parse_label("ewc:lam=100,fisher=empirical+replay:size=500") == [
        ("ewc", {"lam": 100, "fisher": "empirical"}),
        ("replay", {"size": 500}),
    ]
    assert parse_label("ewc+replay:size=500") == [("ewc", {}), ("replay", {"size": 500})]
    # Values are YAML scalars; the '+' of an exponent does not compose.
    assert parse_label("ewc:lam=1e+3,fisher_samples=null") == [
        ("ewc", {"lam": "1e+3", "fisher_samples": None})
    ]
    assert parse_label("replay:ratio=0.3") == [("replay", {"ratio": 0.3})]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("lam=100,ewc", "'lam=100' is a hyperparameter without a strategy"),
        ("ewc,lam=100", "e.g. ewc:lam=100"),
        ("ewc:lam", "'lam' in 'ewc:lam' is not key=value"),
        ("ewc:lam=", "is not key=value"),
        ("ewc:lam=1,lam=2", "sets ewc's 'lam' twice"),
        ("ewc:lam=1,finetune,ewc:lam=1", "lists a strategy twice"),
    ],
)
def test_malformed_labels_are_refused(text, needle):
    with pytest.raises(ConfigError, match=needle):
        for label in parse_labels(text):
            parse_label(label)


def test_values_bind_through_the_config_binder():
    cfg = RunConfig(strategies=[{"name": "ewc", "lam": 50.0, "mode": "online"}])
    specs = specs_for("ewc:lam=1e3+replay:size=200", cfg)
    assert specs == [
        {"name": "ewc", "lam": "1e3", "mode": "online"},
        {"name": "replay", "size": 200},
    ]
    (plan,) = plan_labels(["ewc:lam=1e3+replay:size=200"], cfg)
    assert plan.name == "ewc (lam=1000)+replay (size=200)"
    assert plan.folder == "ewc_lam=1000+replay_size=200"
    with pytest.raises(ConfigError, match=r"'lamb' for strategy 'ewc' \(did you mean 'lam'\?\)"):
        plan_labels(["ewc:lamb=3"], cfg)
    with pytest.raises(ConfigError, match="fisher must be one of"):
        plan_labels(["ewc:fisher=empiric"], cfg)
    with pytest.raises(ConfigError, match="size must be >= 1"):
        plan_labels(["replay:size=0"], cfg)


def test_labels_that_resolve_to_the_same_run_are_refused():
    cfg = RunConfig(strategies=[{"name": "ewc", "lam": 50.0}])
    with pytest.raises(ConfigError, match="'ewc:lam=50' and 'ewc' are the same strategy"):
        plan_labels(["ewc", "ewc:lam=50"], cfg)
    with pytest.raises(ConfigError, match="are the same strategy"):
        plan_labels(["ewc:lam=3,mode=online", "ewc:mode=online,lam=3.0"], cfg)
    # A variant named by what differs from the plain label: the config's lam, not the default's.
    names = [p.name for p in plan_labels(["ewc", "ewc:lam=50,mode=online"], cfg)]
    assert names == ["ewc", "ewc (mode=online)"]


def test_compare_names_variants_in_the_record_the_report_and_the_folder(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(BASE)
    out = tmp_path / "cmp"
    argv = ["compare", str(cfg), "--strategies", "finetune,ewc:lam=100,fisher=empirical"]
    assert main([*argv, "--out", str(out), "-q"]) == 0
    rec = json.loads((out / "result.json").read_text())
    name = "ewc (lam=100, fisher=empirical)"
    assert list(rec["runs"]) == ["finetune", name]
    assert rec["runs"][name]["strategy"] == name
    assert rec["runs"][name]["strategies"][0]["lam"] == 100
    sub = json.loads((out / "ewc_lam=100_fisher=empirical" / "result.json").read_text())
    assert sub["strategy"] == name
    assert name in (out / "report.md").read_text()


def test_compare_help_shows_the_grammar(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = capsys.readouterr().out
    assert "ewc:lam=100" in text
    assert LABEL_GRAMMAR.splitlines()[0] in text
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "ewc:lam=100,fisher=empirical+replay:size=500" in readme
