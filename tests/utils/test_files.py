"""write_atomic: content reaches the disk (fsync) before the rename; a failed write leaves the old
file and no temporary file behind; what a killed write left is removed on the next start."""

import os
import stat
import subprocess
import sys

import pytest

from retain.utils.files import remove_stale_temps, write_atomic


def test_text_bytes_and_writer_function(tmp_path):
    assert write_atomic(tmp_path / "a.txt", "héllo").read_text(encoding="utf-8") == "héllo"
    assert write_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    write_atomic(tmp_path / "c.txt", lambda p: p.write_text("from a writer"))
    assert (tmp_path / "c.txt").read_text() == "from a writer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.txt"]


@pytest.mark.parametrize("data", ["new", lambda p: p.write_text("new")])
def test_fsync_before_rename_and_of_the_folder_after(tmp_path, monkeypatch, data):
    """The file is on the disk before its new name points at it, and the new name itself (the
    folder's entry) is flushed after the rename."""
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(
        os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1]
    )
    write_atomic(tmp_path / "f.txt", data)
    assert calls == ["fsync file", "replace", "fsync folder"]


def _dead_pid() -> int:
    """The id of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_files_are_removed_and_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getpid()
    (tmp_path / "checkpoints" / f".task-0003.tmp-{dead}").mkdir(parents=True)
    (tmp_path / "checkpoints" / f".task-0003.tmp-{dead}" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "checkpoints" / f".task-0002.old-{dead}").mkdir()
    (tmp_path / f".result.json.tmp-{dead}").write_text("{half")
    (tmp_path / f".report.md.tmp-{live}").write_text("being written")
    (tmp_path / "result.json").write_text("{}")
    (tmp_path / ".hidden.tmp-notapid").write_text("mine")
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(
        [f".task-0003.tmp-{dead}", f".task-0002.old-{dead}", f".result.json.tmp-{dead}"]
    )
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == sorted(
        ["checkpoints", f".report.md.tmp-{live}", "result.json", ".hidden.tmp-notapid"]
    )


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


def test_stale_temporary_names_of_one_path_only(tmp_path):
    """A package is written beside the user's other files: only its own leftovers go, and the
    folder is not searched deeper."""
    dead = _dead_pid()
    (tmp_path / f".pkg.tmp-{dead}").mkdir()
    (tmp_path / f".other.tmp-{dead}").write_text("someone else's")
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / f".pkg.tmp-{dead}").write_text("deeper")
    assert [p.name for p in remove_stale_temps(tmp_path, "pkg")] == [f".pkg.tmp-{dead}"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        [f".other.tmp-{dead}", "deep", f".pkg.tmp-{dead}"]
    )
