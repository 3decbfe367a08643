"""What ``--resume`` may continue, checked before a file of the folder is touched.

A folder is resumed only when retain wrote it (its ``retain.json`` says so; a folder written before
the marker existed is recognised by its ``result.json`` or checkpoints), when it is of the kind
asked for (``retain run`` resumes a run, ``retain compare`` a comparison), and when the settings
are the ones it was started with. A user's folder that merely holds a ``report.md`` or a
``result.json``, a comparison given to ``retain run``, a changed learning rate: each is one line,
and nothing on disk changes. The files themselves are checked by :mod:`retain.utils.integrity`.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from retain.config import RunConfig, config_diff, from_dict
from retain.errors import ConfigError, RecordVersionError, RetainError, RunDirError
from retain.report.record import CompareRecord, Record, RunRecord, load_record
from retain.utils.files import remove_stale_temps
from retain.utils.integrity import MARKER, Damaged, read_json, read_marker, write_marker

# What each kind of folder is, and the command that continues it.
WHAT = {
    "run": "a run (retain run)",
    "seeds": "a run over several seeds (retain run with seeds)",
    "compare": "a comparison (retain compare)",
    "package": "a model package (retain train/update)",
}
COMMAND = {"run": "retain run", "seeds": "retain run", "compare": "retain compare"}

# Settings that may change when a run is resumed: where it is and what is rendered, not what
# is trained or measured.
MAY_CHANGE = (
    ("output", "dir"),
    ("output", "plots"),
    ("output", "keep_checkpoints"),
    ("train", "checkpoint_every"),  # how often a run is saved changes none of its results
    ("train", "keep_step_checkpoints"),
)

# What a folder holds before its first result or checkpoint (nothing that could be lost).
BEFORE_TRAINING = frozenset({MARKER, "config.resolved.yaml", "vocab.json"})


def need_out(out: str | Path | None, cfg: RunConfig, resume: bool) -> None:
    """``--resume`` continues a named folder: without ``--out`` (or ``output.dir``) it would
    start a new run in a fresh timestamped folder instead."""
    if resume and out is None and not cfg.output.dir:
        raise ConfigError(
            "--resume continues the run directory given by --out: add --out RUN_DIR "
            "(or set output.dir)"
        )


def dir_kind(path: Path) -> str | None:
    """What ``path`` is: ``run``, ``seeds`` or ``compare`` (its ``retain.json``, or for a folder
    written before the marker existed, what its files show), ``package``, ``""`` for a folder a
    run was started in that holds only its config, ``None`` for an empty or missing folder. A
    folder retain did not write is refused."""
    if not path.is_dir() or not any(path.iterdir()):
        return None
    marker = read_marker(path)
    if marker is not None:
        return str(marker["kind"])
    if (path / "package.json").is_file():
        return "package"
    return _legacy_kind(path)


def _legacy_kind(path: Path) -> str:
    not_ours = (
        f"'{path}' is not a retain run directory (it has no {MARKER}"
        "{why}); resume only a folder retain wrote, or choose another --out"
    )
    result = path / "result.json"
    if result.is_file():
        try:
            data = read_json(result)
        except Damaged as e:
            raise RunDirError(not_ours.format(why=f", and '{result}' is {e.reason}")) from None
        if not isinstance(data, dict) or "schema_version" not in data:
            raise RunDirError(not_ours.format(why=f", and '{result}' is not a retain record"))
        try:
            rec = load_record(result)
        except RunDirError as e:
            raise RunDirError(not_ours.format(why=f", and {e}")) from None
        if isinstance(rec, CompareRecord):
            return "compare"
        return "seeds" if rec.spread is not None else "run"
    if (path / "checkpoints").is_dir():
        return "run"
    names = {p.name for p in path.iterdir()}
    if "config.resolved.yaml" not in names:
        raise RunDirError(not_ours.format(why=", no result.json and no checkpoints"))
    subs = [path / n for n in sorted(names - BEFORE_TRAINING)]
    if not subs:
        return ""  # started, nothing saved yet
    if all(p.is_dir() and (p / "config.resolved.yaml").is_file() for p in subs):
        return "seeds" if all(re.fullmatch(r"seed-\d+", p.name) for p in subs) else "compare"
    raise RunDirError(not_ours.format(why=f", and '{subs[0].name}' is not a run of it"))


def check_target(path: Path, kind: str, resume: bool) -> bool:
    """May ``--resume`` continue ``path`` as ``kind`` (``run``, ``seeds``, ``compare``)? True
    when there is something to continue, False for a missing or empty folder (a new run starts
    there). Without ``resume`` nothing is checked: an existing folder is refused elsewhere."""
    path = Path(path)
    if not resume:
        return False
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run directory '{path}' is a file; choose another --out")
    found = dir_kind(path)
    if found is None:
        return False
    if found == "package":
        raise RunDirError(
            f"'{path}' is {WHAT['package']}, not a run directory; update it with retain update, "
            "or choose another --out"
        )
    if found and found != kind:
        raise RunDirError(
            f"'{path}' holds {WHAT[found]}, not {WHAT[kind]}; continue it with "
            f"{COMMAND[found]} --resume and its own config, or choose another --out"
        )
    result = path / "result.json"
    if result.is_file():
        try:
            rec = load_record(result)
        except RecordVersionError:
            raise
        except RunDirError as e:  # its message starts with the file's name
            raise RunDirError(
                f"{e}; restore it, or delete it: the resumed run writes it again"
            ) from None
        if isinstance(rec, CompareRecord) != (kind == "compare"):
            raise Damaged(
                result,
                f"a {rec.kind} record, in the folder of {WHAT[kind]}",
                "restore the folder's own result.json, or choose another --out",
            )
    return True


def check_resume(
    out: Path, kind: str, resume: bool, cfg: RunConfig, warn: Callable[[str], None] | None
) -> bool:
    """Before any data is read: may ``--resume`` continue ``out`` as ``kind``, with ``cfg``?
    True when there is something to continue (a missing or empty folder: a new run, said)."""
    resuming = check_target(out, kind, resume)
    if resuming:
        check_config(out, cfg)
    elif resume and warn is not None:
        warn(f"nothing to resume in '{out}': a new run starts there")
    return resuming


def check_subs(out: Path, subs: dict[str, RunConfig]) -> None:
    """Before a resumed comparison (or run over seeds) writes anything: each sub-run folder that
    exists (``subs``: folder name -> its config) is a run of it, with its settings, and a
    finished one has a whole record."""
    for folder, sub_cfg in subs.items():
        if check_target(out / folder, "seeds" if sub_cfg.seeds else "run", True):
            check_config(out / folder, sub_cfg)
            finished(out / folder, sub_cfg)


def check_config(path: Path, config: RunConfig | None) -> None:
    """The settings of a resumed run are the ones it was started with (``MAY_CHANGE`` aside);
    one line naming the first settings that differ."""
    p = Path(path) / "config.resolved.yaml"
    if config is None:
        return
    if not p.is_file():
        if any(n not in BEFORE_TRAINING for n in _names(Path(path))):
            raise Damaged(
                p,
                "missing, so the run's settings cannot be checked",
                "restore it, or start a new run with another --out",
            )
        return
    saved = read_config(p)
    with contextlib.suppress(RetainError, TypeError, ValueError):
        # Keys added since the run was written take their defaults on both sides: a run from an
        # older version resumes unless a setting it did write has changed.
        saved = from_dict(RunConfig, saved).to_dict()
    now = config.to_dict()
    for d in (saved, now):
        for section, key in MAY_CHANGE:
            if isinstance(d.get(section), dict):
                d[section].pop(key, None)
    diff = config_diff(saved, now)
    if diff:
        raise RunDirError(
            f"the config differs from the run being resumed in '{path}' ({'; '.join(diff[:3])}); "
            "resume with the same config, or start a new run with another --out"
        )


def read_config(p: Path) -> dict[str, Any]:
    """A run directory's ``config.resolved.yaml`` as a mapping; a damaged one is one line."""
    try:
        saved = yaml.safe_load(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise Damaged(p, "not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise Damaged(p, f"not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(saved, dict):
        raise Damaged(p, f"a mapping of settings expected, got {type(saved).__name__}")
    return saved


def _names(path: Path) -> list[str]:
    return [p.name for p in path.iterdir()] if path.is_dir() else []


def finished(sub: Path, config: RunConfig | None = None) -> RunRecord | None:
    """The record of a sub-run (a seed, a compared strategy) that completed, checked (its
    settings against ``config``, its score matrix against its tasks), else ``None``."""
    path = sub / "result.json"
    if not path.is_file():
        return None
    rec = load_record(path)
    if not isinstance(rec, RunRecord) or not rec.complete:
        return None
    check_config(sub, config)
    check_complete(rec, path)
    return rec


def check_complete(rec: Record, path: Path) -> None:
    """A record marked complete has all of R: a row per trained task plus the first (two rows
    for joint training), a finite score per task in each."""
    if not isinstance(rec, RunRecord):
        return
    n = len(rec.tasks)
    rows = 2 if rec.joint else n + 1
    fix = "delete it and resume again: the run is finished again from its checkpoint"
    if len(rec.matrix) != rows:
        raise Damaged(path, f"matrix has {len(rec.matrix)} rows, {rows} expected", fix)
    for i, row in enumerate(rec.matrix):
        if len(row) != n or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in row):
            raise Damaged(path, f"matrix row {i} is not {n} finite scores", fix)


def adopt(path: Path, kind: str) -> None:
    """Once a resumed folder passed every check: mark it (a folder from before the marker) and
    remove what killed writes left in it."""
    if read_marker(path) is None:
        write_marker(path, kind)
    remove_stale_temps(path)
