"""write_atomic: content reaches the disk (fsync) before the rename; a failed write leaves the old
file and no temporary file behind."""

import os

import pytest

from retain.utils.files import write_atomic


def test_text_bytes_and_writer_function(tmp_path):
    assert write_atomic(tmp_path / "a.txt", "héllo").read_text(encoding="utf-8") == "héllo"
    assert write_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    write_atomic(tmp_path / "c.txt", lambda p: p.write_text("from a writer"))
    assert (tmp_path / "c.txt").read_text() == "from a writer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.txt"]


@pytest.mark.parametrize("data", ["new", lambda p: p.write_text("new")])
def test_fsync_before_rename(tmp_path, monkeypatch, data):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1]
    )
    write_atomic(tmp_path / "f.txt", data)
    assert calls == ["fsync", "replace"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")

    def broken(p):
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
