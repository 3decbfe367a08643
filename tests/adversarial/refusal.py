"""The adversarial suite's one check: a bad input is refused in one line, with the documented
exit code, no traceback, and every file already on disk byte-identical afterwards.

Each file in this folder holds one family of bad inputs (configs, data files, run directories,
the command line) as parametrised cases that call :func:`refused`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from retain.cli import main

BASE = """\
seed: 0
stream: {dataset: digits, scenario: split, n_tasks: 2, classes: [0, 1, 2, 3]}
model: {name: mlp, hidden: [16]}
train: {epochs: 1, batch_size: 64, optimizer: adam, lr: 0.001}
output: {plots: false}
"""


def snapshot(paths: Iterable[Path]) -> dict[str, str]:
    """Every file under ``paths`` (files or folders) with the sha256 of its bytes."""
    out: dict[str, str] = {}
    for p in paths:
        p = Path(p)
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def refused(
    capsys, argv: list[str], *needles: str, keep: Iterable[Path] = (), code: int = 2
) -> str:
    """Run ``retain argv`` in-process; assert exit ``code``, one ``retain: error:`` line on stderr
    holding every needle, no traceback, and the files under ``keep`` unchanged (byte for byte).
    Returns the line."""
    keep = list(keep)
    before = snapshot(keep)
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("retain: error: "), err
    for n in needles:
        assert n in err, err
    assert snapshot(keep) == before, "files on disk changed"
    return err


def put(folder: Path, name: str, content: str | bytes) -> Path:
    """Write ``content`` (text or bytes) to ``folder/name`` and return the path."""
    p = Path(folder) / name
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    return p
