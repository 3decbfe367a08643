"""Files shipped beside the code stay in step with it: every example and benchmark config loads,
and docs/strategies.md is what ``retain strategies --markdown`` prints."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from retain.config import load_config
from retain.labels import parse_labels
from retain.strategies import build_all

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted([*ROOT.glob("examples/*.yaml"), *ROOT.glob("bench/configs/*.yaml")])


def test_configs_are_found():
    assert {p.parent.name for p in CONFIGS} == {"examples", "configs"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.name
    assert build_all(cfg.strategies)  # strategy names and hyperparameters bind too


def test_strategies_doc_is_generated(capsys):
    from retain.cli import main

    assert main(["strategies", "--markdown"]) == 0
    doc = ROOT / "docs" / "strategies.md"
    assert doc.read_text(encoding="utf-8") == capsys.readouterr().out, (
        "docs/strategies.md is out of date: retain strategies --markdown > docs/strategies.md"
    )


def test_config_doc_is_generated(capsys):
    from retain.cli import main

    assert main(["config", "--markdown"]) == 0
    doc = ROOT / "docs" / "config.md"
    assert doc.read_text(encoding="utf-8") == capsys.readouterr().out, (
        "docs/config.md is out of date: retain config --markdown > docs/config.md"
    )


def _compare_commands(path):
    lines = [ln.lstrip("# ").strip() for ln in path.read_text().splitlines() if ln.startswith("#")]
    return [shlex.split(ln) for ln in lines if ln.startswith("retain compare")]


@pytest.mark.parametrize(
    "path",
    [p for p in CONFIGS if _compare_commands(p)],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_the_compare_commands_in_an_examples_comments_bind(path):
    """Every label of the `retain compare` commands a config's comments give binds: a
    hyperparameter the strategy lacks or a misspelt name would fail here, not after a download
    and twenty minutes of training."""
    from retain.runner import plan_labels

    for argv in _compare_commands(path):
        at = argv.index("--strategies") + 1
        # KEY=VALUE overrides after the config file bind too (the value of an option is not one)
        overrides = [
            a
            for i, a in enumerate(argv[3:], 3)
            if "=" in a and not a.startswith("-") and not argv[i - 1].startswith("--")
        ]
        cfg = load_config(path, overrides)
        labels = parse_labels(argv[at])
        assert plan_labels(labels, cfg)
