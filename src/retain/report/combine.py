"""One comparison from several run directories (``retain report DIR1 DIR2 ... --out DIR``).

Every run of every directory (a single run, or each strategy of a comparison) becomes one
strategy of a new comparison record, so the report puts them side by side: one metrics table,
the overlaid curves, the trade-off scatter. The runs must have been scored on the same tasks with
the same score; they may differ in anything else (settings, seeds, the retain version), which the
report's settings section shows run by run.

Only the standard library is imported, like the rest of the report package.
"""

from __future__ import annotations

import copy
from pathlib import Path

from retain.errors import ConfigError
from retain.eval.metrics import gap_to_joint
from retain.report.record import CompareRecord, Record, RunRecord, load_record

SOURCES = "sources"  # the combined record's key listing the run directories it came from


def _label(label: str, folder: Path, taken: set[str], clash: bool) -> str:
    """``label``, prefixed with its directory's name when another directory has the same label,
    numbered if that is still taken."""
    name = f"{folder.name}/{label}" if clash else label
    out, n = name, 2
    while out in taken:
        out, n = f"{name} ({n})", n + 1
    return out


def combine(folders: list[Path]) -> CompareRecord:
    """The comparison of every run in ``folders`` (each holding a ``result.json``).

    Raises :class:`ConfigError` when two runs were scored on different tasks, scores or splits:
    their numbers would sit in one table without meaning the same thing.
    """
    records: list[tuple[Path, Record]] = [
        (Path(f), load_record(Path(f) / "result.json")) for f in folders
    ]
    first_dir, first = records[0]
    for folder, rec in records[1:]:
        for what, a, b in (
            ("tasks", first.tasks, rec.tasks),
            ("score", first.score, rec.score),
            ("evaluation split", first.split, rec.split),
        ):
            if a != b:
                raise ConfigError(
                    f"'{folder}' has {what} {_show(b)} and '{first_dir}' has {_show(a)}: a "
                    "compare report puts runs of the same tasks and score side by side; "
                    "report them separately"
                )
    counts: dict[str, int] = {}
    for _, rec in records:
        for label in rec.runs:
            counts[label] = counts.get(label, 0) + 1
    runs: dict[str, RunRecord] = {}
    for folder, rec in records:
        for label, run in rec.runs.items():
            runs[_label(label, folder, set(runs), counts[label] > 1)] = copy.deepcopy(run)
    _gaps(runs)
    seeds = {rec.seed for _, rec in records}
    return CompareRecord(
        runs=runs,
        name="compare " + " ".join(f.name for f, _ in records),
        tasks=first.tasks,
        score=first.score,
        split=first.split,
        higher_is_better=first.higher_is_better,
        stream=first.stream,
        seed=seeds.pop() if len(seeds) == 1 else None,
        versions=first.versions or next(iter(first.runs.values()), RunRecord()).versions,
        extra={SOURCES: [str(f) for f, _ in records]},
    )


def _show(value: object) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _gaps(runs: dict[str, RunRecord]) -> None:
    """Each run's gap to joint training, recomputed: against the one joint run of the report,
    or none when there are several (each directory's gap was to its own joint run)."""
    joints = [r for r in runs.values() if r.joint and r.complete and r.metrics is not None]
    for run in runs.values():
        if run.metrics is None:
            continue
        if len(joints) == 1 and joints[0].metrics is not None:
            joint = joints[0].metrics.avg_accuracy
            run.metrics.gap_to_joint = gap_to_joint(
                joint, run.metrics.avg_accuracy, run.higher_is_better
            )
        else:
            run.metrics.gap_to_joint = None
        if run.spread is not None:  # its std was paired seed by seed with its own joint run
            run.spread.metrics_std.pop("gap_to_joint", None)


def check_out(out: Path, folders: list[Path]) -> None:
    """Refuse an ``--out`` that is one of the run directories or holds another run's record."""
    out = Path(out)
    if any(out.resolve() == Path(f).resolve() for f in folders):
        raise ConfigError(
            f"--out '{out}' is one of the run directories being compared; choose a new folder"
        )
    if (out / "result.json").is_file():
        try:
            rec = load_record(out / "result.json")
        except Exception:  # unreadable: not ours to overwrite either
            rec = None
        if not isinstance(rec, CompareRecord) or SOURCES not in rec.extra:
            raise ConfigError(
                f"--out '{out}' holds a run's result.json, which the compare report would "
                "replace; choose a new folder"
            )


def report_dirs(
    folders: list[Path], out: Path | None, plots: bool = True
) -> tuple[Record, list[Path]]:
    """The reports of one run directory (into it, or into ``out``), or the compare report of
    several into ``out`` (required), with the combined ``result.json`` so that ``retain report
    OUT`` renders it again. Returns the record and the paths written."""
    from retain.report.render import write_reports
    from retain.utils.state import write_json

    folders = [Path(f) for f in folders]
    if len(folders) == 1:
        record = load_record(folders[0] / "result.json")
        if out is None:
            return record, write_reports(folders[0], record, plots=plots)
        if Path(out).resolve() != folders[0].resolve():
            check_out(Path(out), folders)
        return record, write_reports(Path(out), record, plots=plots)
    if out is None:
        raise ConfigError("several run directories make one compare report: give --out DIR for it")
    out = Path(out)
    check_out(out, folders)
    record = combine(folders)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "result.json", record.to_dict())
    return record, [out / "result.json", *write_reports(out, record, plots=plots)]
