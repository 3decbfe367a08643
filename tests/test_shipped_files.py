"""Files shipped beside the code stay in step with it: every example and benchmark config loads,
and docs/strategies.md is what ``retain strategies --markdown`` prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from retain.config import load_config
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
