"""The config reference lists every key the config dataclasses accept, and the command line points
users at it."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from retain.cli import build_parser, main
from retain.config import SCENARIOS, RunConfig
from retain.reference import config_reference, sections


def test_every_key_of_every_section_and_scenario_is_listed():
    doc = config_reference(markdown=True)
    sections_ = ("stream", "model", "train", "eval", "guard", "output")
    expected = [f"`{f.name}`" for f in dataclasses.fields(RunConfig) if f.name not in sections_]
    for name in sections_:
        section = getattr(RunConfig(), name)
        for f in dataclasses.fields(section):
            inner = getattr(section, f.name)
            if f.name == "options":
                continue  # a scenario's keys, listed beside the stream's (below)
            if dataclasses.is_dataclass(inner):  # a section of its own (model.vocab)
                expected += [f"`{name}.{f.name}.{g.name}`" for g in dataclasses.fields(inner)]
            else:
                expected.append(f"`{name}.{f.name}`")
    for cls in SCENARIOS.values():
        expected += [f"`stream.{f.name}`" for f in dataclasses.fields(cls)]
    missing = [k for k in expected if f"| {k} |" not in doc]
    assert not missing, missing
    assert "## `stream` with `scenario: files`" in doc
    assert "`stream.options`" not in doc  # written beside the stream keys, never as 'options'


def test_a_row_shows_type_default_bounds_and_meaning():
    doc = config_reference(markdown=True)
    assert (
        "| `stream.test_fraction` | float | `0.2` | > 0, < 1 | fraction held out as test set "
        "when the source has none |" in doc
    )
    assert "| `model.hidden` | a list of int | `[100, 100]` | >= 1 |" in doc
    assert "[strategies.md](strategies.md)" in doc  # strategies' hyperparameters are there


def test_sections_follow_the_dataclasses():
    titles = [title for title, _, _ in sections()]
    assert titles[:2] == ["Top level", "`stream`"]
    scenarios = [f"`stream` with `scenario: {n}`" for n in SCENARIOS]
    # scenario text's named sources are mappings with keys of their own
    scenarios.insert(
        scenarios.index("`stream` with `scenario: text`") + 1,
        "`stream.sources.NAME` (scenario `text`)",
    )
    assert titles[2 : 2 + len(scenarios)] == scenarios
    sections_ = ["`model`", "`model.vocab`", "`train`", "`eval`", "`guard`", "`output`"]
    assert titles[2 + len(scenarios) :] == sections_  # a section inside one follows it


def test_retain_config_prints_plain_lines(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "    train.lr: float = 0.01 (> 0)  peak learning rate" in out
    assert "|" not in out.split("\n")[1]


def test_run_help_points_at_the_quickstart_and_the_reference():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    text = sub.choices["run"].format_help()
    assert "docs/quickstart.md" in text and "docs/config.md" in text
    assert set(sub.choices) == {
        "merge",
        "run",
        "compare",
        "init",
        "strategies",
        "config",
        "report",
        "demo",
        "train",
        "package",
        "update",
        "gate",
        "landscape",
        "study",
    }


def test_cli_functions_stay_short():
    """Each function of the command line fits on a screen (80 lines): one per subcommand parser."""
    folder = Path(__file__).resolve().parents[1] / "src" / "retain" / "cli"
    long = [
        (node.name, node.end_lineno - node.lineno + 1)
        for src in sorted(folder.glob("*.py"))
        for node in ast.walk(ast.parse(src.read_text()))
        if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 80
    ]
    assert not long, long
