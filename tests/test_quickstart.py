"""docs/quickstart.md works as written: every `retain` command in its ```sh blocks is run, in
order and exactly as the page shows it, from a folder holding the example files."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from retain.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "quickstart.md"


def quickstart_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", PAGE.read_text(), flags=re.S)
    return [line.strip() for b in blocks for line in b.splitlines() if line.strip()]


def test_the_page_shows_commands_for_two_files_and_one_file_by_column():
    commands = quickstart_commands()
    assert all(c.startswith("retain ") for c in commands), commands
    inits = [c for c in commands if c.startswith("retain init ")]
    assert len(inits) == 2 and "--by" in inits[1]
    assert any(c.startswith("retain compare ") for c in commands)


@pytest.mark.slow
def test_quickstart_commands_run_as_written(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    for command in quickstart_commands():
        argv = shlex.split(command)[1:]
        assert main(argv) == 0, f"{command}\n{capsys.readouterr().err}"
    for out in ("runs/my_data", "runs/by_sex"):
        assert (tmp_path / out / "result.json").is_file()
        assert (tmp_path / out / "report.html").is_file()
    printed = capsys.readouterr().out
    assert "retain compare my_data.yaml --strategies" in printed
