"""A folder that fills up or cannot be written: one line naming the file, exit 2, and no
half-written file or checkpoint folder left behind."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from refusal import BASE, put, refused

import retain.utils.checkpoint as ckpt


class FakeSafetensorsError(Exception):
    """What safetensors' writer raises on a full disk: its own type, the OS error in the text."""


def _leftovers(out: Path) -> list[str]:
    return [p.name for p in out.rglob("*") if ".tmp-" in p.name]


@pytest.mark.parametrize(
    "raised, needle",
    [
        (FakeSafetensorsError("I/O error: No space left on device (os error 28)"), "no space left"),
        (OSError(errno.ENOSPC, "No space left on device"), "no space left"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "quota"),
        (OSError(errno.EROFS, "Read-only file system"), "read-only"),
    ],
)
def test_checkpoint_write_failure_is_one_line(capsys, tmp_path, monkeypatch, raised, needle):
    def failing(model, path):
        Path(path).write_bytes(b"partial")
        raise raised

    monkeypatch.setattr(ckpt, "save_model", failing)
    cfg = put(tmp_path, "exp.yaml", BASE)
    out = tmp_path / "run"
    line = refused(capsys, ["run", str(cfg), "--out", str(out), "-q"], needle, "model.safetensors")
    assert "--resume" in line
    assert _leftovers(out) == []


def test_other_os_errors_stay_tracebacks(tmp_path, monkeypatch):
    # A bug must not hide behind the one-line path: only errors the user can fix are mapped.
    def failing(model, path):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(ckpt, "save_model", failing)
    from retain.cli import main

    with pytest.raises(OSError):
        main(["run", str(put(tmp_path, "exp.yaml", BASE)), "--out", str(tmp_path / "r"), "-q"])


@pytest.mark.slow  # a separate Python process that imports torch
@pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None,
    reason="needs root to mount a small tmpfs",
)
def test_a_really_full_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(disk)], check=False
    ).returncode:
        pytest.skip("mount not permitted here")
    try:
        cfg = put(tmp_path, "exp.yaml", BASE)
        proc = subprocess.run(
            [sys.executable, "-m", "retain", "run", str(cfg), "--out", str(disk / "run"), "-q"],
            check=False,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("retain: error: no space left on the device writing")
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert _leftovers(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)
