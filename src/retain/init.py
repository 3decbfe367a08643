"""``retain init``: look at a user's tables and write a commented config that runs on them.

Each choice the config makes is written beside it as a comment with its reason (the target and
why, classification or regression and why, every column left out and why), so the user checks
the guesses instead of guessing keys. Sizes follow the data: a small table gets a small network,
a longer training budget and a larger validation split for early stopping.

Examples:
    >>> text = init_config(["jan.csv", "feb.csv"], target="churned")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from retain.data.readers import MISSING, TARGET_NAMES, read_columns
from retain.errors import DataError, did_you_mean

# An integer target with at most this many distinct values is read as class labels; more values
# look like a count or an amount (visits, items sold), which a regression predicts better.
MAX_CLASSES = 20
# scenario by_column: at most this many tasks from the values of one column.
MAX_GROUPS = 20
# Of each task, held out for the scores.
TEST_FRACTION = 0.2
STRATEGIES = {
    # Those that run with their defaults on the objective, a short list to start with.
    "classification": "finetune,joint,replay,ewc,lwf,si",
    "regression": "finetune,joint,replay,si,mas",
}


@dataclass
class Column:
    """What a column holds, over all the files: kind (integer, number, text), distinct values
    (at most ``MAX_GROUPS + 1`` are kept), missing cells, and in how many files it appears."""

    name: str
    kind: str
    distinct: int
    missing: int
    files: int
    values: list[Any]


def _profile(cols: list[dict[str, np.ndarray]]) -> dict[str, Column]:
    out: dict[str, Column] = {}
    names = list(dict.fromkeys(n for c in cols for n in c))
    for name in names:
        parts = [c[name] for c in cols if name in c]
        text = any(p.dtype.kind in "USO" for p in parts)
        if text:
            vals = np.concatenate([p.astype(str) for p in parts])
            missing = int(np.isin(np.char.strip(vals), MISSING).sum())
            present = vals[~np.isin(np.char.strip(vals), MISSING)]
            kind = "text"
        else:
            vals = np.concatenate([p.astype(np.float64) for p in parts])
            missing = int(np.isnan(vals).sum())
            present = vals[~np.isnan(vals)]
            kind = "integer" if np.all(present == np.round(present)) else "number"
        uniq = np.unique(present)
        keep = [u.item() for u in uniq[: MAX_GROUPS + 1]]
        if kind == "integer":
            keep = [int(v) for v in keep]
        out[name] = Column(name, kind, len(uniq), missing, len(parts), keep)
    return out


def _target(cols: dict[str, Column], target: str | None, n_files: int) -> tuple[str, str]:
    names = list(cols)
    if target is not None:
        if target not in cols:
            raise DataError(
                f"no column '{target}'{did_you_mean(target, names)}; columns: {', '.join(names)}"
            )
        reason = "given with --target"
    else:
        named = next((n for n in TARGET_NAMES if n in cols), None)
        target = named or names[-1]
        reason = (
            f"guessed from its name ('{named}')"
            if named
            else "guessed: the last column (say --target COLUMN if it is another)"
        )
    c = cols[target]
    if c.files < n_files:
        raise DataError(f"the target column '{target}' is missing from some of the files")
    if c.missing:
        raise DataError(
            f"the target column '{target}' has {c.missing} missing values; drop those rows first"
        )
    return target, reason


def _objective(c: Column) -> tuple[str, str]:
    if c.kind == "text":
        return "classification", f"text values, {c.distinct} classes"
    if c.kind == "integer" and c.distinct <= MAX_CLASSES:
        if min(c.values) < 0:
            raise DataError(
                f"the target column '{c.name}' holds negative class labels "
                f"({min(c.values)}); recode them as 0, 1, 2, ..."
            )
        return "classification", f"whole numbers with {c.distinct} distinct values: classes"
    if c.kind == "integer":
        return "regression", (
            f"whole numbers with {c.distinct} distinct values (more than "
            f"{MAX_CLASSES}): a quantity, not classes"
        )
    return "regression", "numbers with fractions: a quantity"


def _features(
    cols: dict[str, Column], target: str, by: str | None, n_files: int
) -> tuple[list[str], dict[str, str]]:
    features, left_out = [], {}
    for name, c in cols.items():
        if name in (target, by):
            continue
        if c.files < n_files:
            left_out[name] = f"in {c.files} of the {n_files} files only"
        elif c.kind == "text":
            left_out[name] = (
                f"text ({c.distinct} distinct values); retain does not encode text "
                "features: encode it as numbers to use it"
            )
        elif c.missing:
            left_out[name] = f"{c.missing} missing values; fill them or drop those rows to use it"
        elif c.distinct < 2:
            left_out[name] = "the same value everywhere"
        else:
            features.append(name)
    if not features:
        raise DataError(
            f"no numeric columns without missing values besides the target '{target}' to learn from"
        )
    return features, left_out


def _sizes(rows_per_task: int) -> dict[str, Any]:
    """Network and training budget for this many training rows per task."""
    if rows_per_task < 1000:
        return {
            "hidden": [64, 64],
            "batch_size": 32,
            "epochs": 200,
            "patience": 10,
            "validation": 0.15,
        }
    if rows_per_task < 20000:
        return {
            "hidden": [128, 128],
            "batch_size": 64,
            "epochs": 100,
            "patience": 5,
            "validation": 0.1,
        }
    return {"hidden": [256, 256], "batch_size": 128, "epochs": 30, "patience": 3, "validation": 0.1}


def _y(value: Any) -> str:
    """A scalar as YAML."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def _entry(key: str, value: Any, comment: str = "", indent: int = 2) -> list[str]:
    """``key: value`` as YAML lines (lists in flow style, wrapped), the comment on the last."""
    if isinstance(value, list):
        text = yaml.safe_dump({key: value}, default_flow_style=None, width=92, sort_keys=False)
        lines = [" " * indent + line for line in text.rstrip().splitlines()]
    else:
        lines = [f"{' ' * indent}{key}: {_y(value)}"]
    if comment:
        lines[-1] = f"{lines[-1]:<28} # {comment}"
    return lines


def init_config(
    files: list[str | Path],
    target: str | None = None,
    by: str | None = None,
    out: str | Path = "config.yaml",
) -> str:
    """The text of a commented config for ``files`` (CSV or Parquet tables).

    Two or more files: one task per file (scenario ``files``). One file: one task per value of
    ``by`` (scenario ``by_column``), or two random halves when ``by`` is None (scenario ``iid``).
    Paths in the config are written relative to the folder of ``out``, where the config will be.
    """
    paths = [Path(f).expanduser() for f in files]
    if not paths:
        raise DataError("give one or more CSV or Parquet files")
    if by is not None and len(paths) > 1:
        raise DataError("--by splits one file into tasks; with several files each file is a task")
    choices = _choose(paths, target, by)
    folder = Path(out).expanduser().absolute().parent
    sources = [Path(os.path.relpath(p.absolute(), folder)).as_posix() for p in paths]
    lines = [
        f"# Written by `retain init` for {', '.join(p.name for p in paths)}.",
        "# Check the choices explained in the comments, then:",
        f"#   retain compare {Path(out)} --strategies {STRATEGIES[choices.objective]}",
        "# Data paths are relative to this file's folder. Any key can also be set on the command",
        "# line, e.g. train.epochs=5 for a quick first try.",
        "seed: 0",
        "stream:",
    ]
    lines += _tasks_lines(sources, choices)
    lines += _stream_lines(choices)
    lines += _model_and_train_lines(choices)
    return "\n".join(lines) + "\n"


@dataclass
class Choices:
    """What ``retain init`` decided about the files; each ``*_why`` is written beside its key."""

    target: str
    target_why: str
    objective: str
    objective_why: str
    features: list[str]
    left_out: dict[str, str]  # column -> why it is not a feature
    by: str | None  # scenario by_column's column
    groups: list[Any]  # the values of ``by``, one task each
    per_task: int  # rows per task, test rows included
    size: dict[str, Any]  # network and training budget (see _sizes)


def _choose(paths: list[Path], target: str | None, by: str | None) -> Choices:
    """Read the tables and choose the target, the objective, the features and the sizes."""
    tables = [read_columns(p) for p in paths]
    rows = [len(next(iter(t.values()))) for t in tables]
    cols = _profile(tables)
    target, target_why = _target(cols, target, len(paths))
    objective, objective_why = _objective(cols[target])
    if by is not None:
        _check_by(cols, by, target)
    features, left_out = _features(cols, target, by, len(paths))
    n_tasks = len(paths) if len(paths) > 1 else cols[by].distinct if by else 2
    per_task = min(rows) if len(paths) > 1 else rows[0] // n_tasks
    return Choices(
        target,
        target_why,
        objective,
        objective_why,
        features,
        left_out,
        by,
        cols[by].values if by else [],
        per_task,
        _sizes(int(per_task * (1 - TEST_FRACTION))),
    )


def _check_by(cols: dict[str, Column], by: str, target: str) -> None:
    """``--by`` must name a column other than the target, with few values and none missing."""
    if by == target:
        raise DataError(f"--by '{by}' is the target; split by another column")
    if by not in cols:
        raise DataError(
            f"no column '{by}'{did_you_mean(by, list(cols))}; columns: {', '.join(cols)}"
        )
    if cols[by].distinct > MAX_GROUPS or cols[by].missing:
        raise DataError(
            f"column '{by}' has {cols[by].distinct} distinct values"
            f"{' and missing ones' if cols[by].missing else ''}; --by needs at "
            f"most {MAX_GROUPS} values, one task each: write stream.groups by hand"
        )


def _tasks_lines(sources: list[str], c: Choices) -> list[str]:
    """The stream's data and scenario: one task per file, per value of ``by``, or two halves."""
    if len(sources) > 1:
        lines = _entry("scenario", "files", "one task per file, trained in this order")
        return lines + _entry("files", sources)
    lines = _entry("dataset", sources[0])
    if c.by:
        lines += _entry("scenario", "by_column", f"one task per value of '{c.by}', in order")
        lines += _entry("column", c.by)
        return lines + _entry("groups", c.groups)
    lines += _entry(
        "scenario", "iid", "two random halves, D1 then D2 (--by COLUMN splits by a column)"
    )
    return lines + _entry("n_tasks", 2)


def _stream_lines(c: Choices) -> list[str]:
    """The stream's target, objective, features and held-out fractions."""
    lines = _entry("target", c.target, c.target_why)
    lines += _entry("objective", c.objective, c.objective_why)
    lines += _entry("features", c.features)
    lines += [f"  # left out: {name}: {why}" for name, why in c.left_out.items()]
    lines += [f"  # left out: {c.by}: it defines the tasks"] if c.by else []
    lines += _entry(
        "test_fraction",
        TEST_FRACTION,
        f"of each task, held out for the scores "
        f"(about {int(c.per_task * TEST_FRACTION)} rows per task)",
    )
    lines += _entry(
        "validation", c.size["validation"], "of each task's training rows, for early stopping"
    )
    scaled = "features and target" if c.objective == "regression" else "features"
    return lines + _entry(
        "standardize", True, f"{scaled} scaled with the first task's training statistics"
    )


def _model_and_train_lines(c: Choices) -> list[str]:
    """The network and the training budget, sized for the rows per task; one strategy to run."""
    lines = ["model:"]
    lines += _entry("name", "mlp", f"a small network for about {c.per_task} rows per task")
    lines += _entry("hidden", c.size["hidden"])
    lines += ["train:"]
    lines += _entry("epochs", c.size["epochs"], "at most: early stopping ends a task sooner")
    lines += _entry(
        "patience",
        c.size["patience"],
        "epochs without a better validation loss before stopping (the best weights are kept)",
    )
    lines += _entry("batch_size", c.size["batch_size"])
    lines += _entry("optimizer", "adam")
    lines += _entry("lr", 0.001)
    lines += _entry("weight_decay", 0.0001)
    return lines + [
        f"{'strategies:':<28} # what `retain run` trains, composed in order",
        f"{'  - name: finetune':<28} # (`retain compare --strategies` picks its own)",
    ]


def write_config(
    files: list[str | Path],
    target: str | None = None,
    by: str | None = None,
    out: str | Path = "config.yaml",
    force: bool = False,
) -> tuple[Path, str]:
    """Write :func:`init_config`'s text to ``out`` (never over an existing file unless ``force``);
    return the path and the ``retain compare`` command to run next."""
    path = Path(out).expanduser()
    if path.exists() and not force:
        raise DataError(f"'{path}' already exists; choose another --out, or pass --force")
    text = init_config(files, target=target, by=by, out=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path, text.splitlines()[2].removeprefix("#").strip()
