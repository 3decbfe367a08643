"""The harness itself can fail: a file changed on disk, or a refusal in two lines, is caught."""

from __future__ import annotations

import pytest
import refusal
from refusal import BASE, put, refused


def test_refused_sees_changed_files(capsys, tmp_path, monkeypatch):
    cfg = put(tmp_path, "exp.yaml", BASE + "trian: {}\n")
    kept = put(tmp_path, "keep.txt", "old")

    def touching(argv):
        kept.write_text("new")
        print("retain: error: x", file=__import__("sys").stderr)
        return 2

    monkeypatch.setattr(refusal, "main", touching)
    with pytest.raises(AssertionError, match="files on disk changed"):
        refused(capsys, ["run", str(cfg)], keep=[kept])


def test_refused_sees_two_lines(capsys, tmp_path, monkeypatch):
    def chatty(argv):
        print("retain: error: x\nmore", file=__import__("sys").stderr)
        return 2

    monkeypatch.setattr(refusal, "main", chatty)
    with pytest.raises(AssertionError):
        refused(capsys, ["run", "x"])


def test_refused_passes_one_line(capsys, tmp_path):
    cfg = put(tmp_path, "exp.yaml", BASE + "trian: {}\n")
    refused(capsys, ["run", str(cfg)], "trian", keep=[cfg])
