"""The report in words: :func:`summary_lines` and the record helpers it needs.

The plain-words conclusions are shared by every rendering (report.md, report.html, the terminal
summary in :mod:`retain.report.console`), so they live here with the small record helpers they
need (also used by the renderer and the plots). Only the standard library is imported, so
``retain.report.render`` stays cheap to import.
"""

from __future__ import annotations

from typing import Any

from retain.report.columns import ACCURACY_LIKE, BY_KEY, fmt, score_name
from retain.report.record import CompareRecord, Record, RunRecord, record_from_dict

__all__ = [
    "as_record",
    "best_strategy",
    "class_accuracy",
    "class_label",
    "fmt",
    "pooled_accuracy",
    "report_title",
    "row_labels",
    "score_name",
    "summary_lines",
    "vanished_classes",
]

MAX_LISTED_TASKS = 8  # beyond this, the per-task loss sentence names only the worst tasks


# --------------------------------------------------------------------------- record helpers


def as_record(record: Record | dict[str, Any]) -> Record:
    """A typed record; a ``dict`` (parsed ``result.json``) is checked and converted."""
    return record if isinstance(record, (RunRecord, CompareRecord)) else record_from_dict(record)


def row_labels(run: RunRecord) -> list[str]:
    """Labels of the rows of a run's matrix: "untrained", "after t1", ... (joint: "after joint")."""
    after = ["joint"] if run.joint else list(run.tasks)
    return (["untrained"] + [f"after {t}" for t in after])[: len(run.matrix)]


def report_title(record: Record) -> str:
    """The run's name, else its stream's, else "run"."""
    return record.name or record.stream.name or "run"


def best_strategy(record: Record) -> str | None:
    """The finished non-joint strategy with the best average final score (``None`` unless there
    are two or more: naming the only one "best" would say nothing)."""
    done = {
        label: r.metrics.avg_accuracy
        for label, r in record.runs.items()
        if r.metrics is not None and r.complete and not r.joint
    }
    higher = BY_KEY["avg_accuracy"].higher_is_better(record.higher_is_better)
    pick = max if higher else min
    return pick(done, key=done.__getitem__) if len(done) > 1 else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def class_label(record: Record, c: int) -> str:
    """The display name of class ``c``: from ``stream.class_names`` when present."""
    names = record.stream.class_names
    return str(names[c]) if names and c < len(names) else str(c)


def class_accuracy(run: RunRecord) -> list[list[float | None]]:
    """Per-class accuracy after each row, over the union of all tasks' test sets.

    ``per_class`` holds ``[row][task][class]`` counts; a class's accuracy is its correct
    predictions summed over tasks divided by its test samples summed over tasks (``None`` for a
    class with no test samples).
    """
    if run.per_class is None:
        return []
    out = []
    for correct, counts in zip(run.per_class.correct, run.per_class.counts):
        hits = [sum(t[c] for t in correct) for c in range(len(counts[0]))]
        total = [sum(t[c] for t in counts) for c in range(len(counts[0]))]
        out.append([h / n if n else None for h, n in zip(hits, total)])
    return out


def vanished_classes(record: Record, run: RunRecord) -> list[int]:
    """Classes with test data in some task but none in the last task's test set, in a stream
    where every task shares one label space (prior shift, domains): in a class-incremental split
    every earlier class is absent from the last task by design, and none is reported."""
    counts = run.per_class.counts if run.per_class is not None else []
    if not counts or record.stream.setting != "domain_il":
        return []
    last = counts[-1][-1]
    return [c for c in range(len(last)) if last[c] == 0 and any(t[c] for t in counts[-1])]


def pooled_accuracy(run: RunRecord, classes: list[int]) -> float | None:
    """Final accuracy over the test samples of ``classes`` taken together."""
    pc = run.per_class
    if pc is None or not pc.counts:
        return None
    hits = sum(t[c] for t in pc.correct[-1] for c in classes)
    total = sum(t[c] for t in pc.counts[-1] for c in classes)
    return hits / total if total else None


# --------------------------------------------------------------------------- summary


def _changes(run: RunRecord) -> list[tuple[str, float, float]]:
    """(task, score just after training it, final score) for every earlier task."""
    R, tasks = run.matrix, run.tasks
    n_tasks = len(tasks)
    if run.joint or n_tasks < 2 or len(R) < n_tasks + 1:
        return []
    diag = (run.metrics.plasticity_per_task if run.metrics else None) or [
        R[i + 1][i] for i in range(n_tasks)
    ]
    return [(tasks[j], diag[j], R[n_tasks][j]) for j in range(n_tasks - 1)]


def _loss_sentence(run: RunRecord) -> str:
    """How much of each earlier task a run lost, in the score's own direction."""
    score, higher = run.score, run.higher_is_better
    changes = _changes(run)
    if len(changes) > MAX_LISTED_TASKS:
        worst = sorted(changes, key=lambda c: (c[2] - c[1]) * (1 if higher else -1))
        keep = {c[0] for c in worst[: MAX_LISTED_TASKS - 2]}
        shown = [c for c in changes if c[0] in keep]
        tail = f"; {len(changes) - len(shown)} more tasks in the matrix below"
    else:
        shown, tail = changes, ""
    if not shown:
        return ""
    if score in ACCURACY_LIKE:
        # For accuracy the drop in points is the share of the task's test set now answered wrongly.
        groups: dict[str, list[str]] = {"lost": [], "gained": [], "kept": []}
        for task, before, after in shown:
            pts = f"{abs(after - before) * 100:.0f}%"
            arrow = f"({fmt(before, score)} → {fmt(after, score)})"
            if pts == "0%":
                groups["kept"].append(f"{task} {arrow}")
            else:
                groups["lost" if after < before else "gained"].append(
                    f"{pts} {'of' if after < before else 'on'} {task} {arrow}"
                )
        parts = [f"{verb} {', '.join(items)}" for verb, items in groups.items() if items]
        return f"It {'; '.join(parts)}{tail}."
    name = score_name(score)
    clauses = []
    for task, before, after in shown:
        verb = "rose" if after > before else "fell" if after < before else "stayed"
        better = (after > before) == bool(higher)
        note = "" if after == before else " (better)" if better else " (worse)"
        span = (
            f"at {fmt(after, score)}"
            if after == before
            else (f"from {fmt(before, score)} to {fmt(after, score)}")
        )
        clauses.append(f"{name} on {task} {verb} {span}{note}")
    return f"Since training each earlier task: {', '.join(clauses)}{tail}."


def _avg(run: RunRecord) -> float:
    assert run.metrics is not None  # only called on complete runs
    return run.metrics.avg_accuracy


def _versus(avg: float, ref: float, score: str | None, higher: bool) -> str:
    diff = avg - ref
    if fmt(abs(diff), score) == fmt(0.0, score):
        return "on par with"
    return f"{fmt(abs(diff), score)} {'below' if diff < 0 else 'above'}"


def _compare_lines(record: CompareRecord) -> list[str]:
    runs = record.runs
    score, higher = record.score, record.higher_is_better
    name, n_tasks = score_name(score), len(record.tasks)
    lines = []
    unfinished = [label for label, r in runs.items() if not r.complete]
    if unfinished:
        lines.append(
            f"This comparison is incomplete: {', '.join(unfinished)} did not finish; "
            "their numbers cover only the tasks trained so far."
        )
    joint = next((label for label, r in runs.items() if r.joint and r.complete), None)
    ref = _avg(runs[joint]) if joint else None
    if joint:
        named = "" if joint == "joint" else f"{joint}: "
        lines.append(
            f"Joint training ({named}all tasks trained together at once, the usual "
            f"upper reference) reaches average {name} {fmt(ref, score)} over "
            f"{n_tasks} tasks."
        )
    else:
        lines.append(
            "No joint-training run to compare against: add `joint` to the strategies "
            "for an upper reference."
        )
    done = {label: r for label, r in runs.items() if r.complete and not r.joint}
    order = "" if higher else "; lower is better"
    for label, run in done.items():
        avg = _avg(run)
        if ref is not None:
            head = (
                f"{label} ends {_versus(avg, ref, score, higher)} joint training (average "
                f"{name} {fmt(avg, score)} vs {fmt(ref, score)}{order})."
            )
        else:
            head = f"{label} ends at average {name} {fmt(avg, score)}{order}."
        lines.append(" ".join(s for s in (head, _loss_sentence(run)) if s))
    best = best_strategy(record)
    if best is not None:
        avg = _avg(done[best])
        tail = f", {_versus(avg, ref, score, higher)} joint training" if ref is not None else ""
        lines.append(f"Best non-joint strategy: {best} (average {name} {fmt(avg, score)}{tail}).")
    lines += _vanished_lines(record)
    return lines


def _vanished_lines(record: CompareRecord) -> list[str]:
    runs = {label: r for label, r in record.runs.items() if r.per_class is not None}
    if not runs:
        return []
    gone = vanished_classes(record, next(iter(runs.values())))
    if not gone:
        return []
    names = [class_label(record, c) for c in gone]
    shown = ", ".join(names[:10]) + (", …" if len(names) > 10 else "")
    accs = ", ".join(f"{label} {fmt(pooled_accuracy(r, gone))}" for label, r in runs.items())
    return [
        (
            f"{len(gone)} class{'es' if len(gone) > 1 else ''} ({shown}) vanished from the last "
            f"task (absent from its test data); final accuracy on them: {accs}."
        )
    ]


def _run_lines(run: RunRecord) -> list[str]:
    label, score = run.strategy or "run", run.score
    name, tasks = score_name(score), run.tasks
    R, m = run.matrix, run.metrics
    if m is None or not run.complete:
        k = max(len(R) - 1, 0)
        total = 1 if run.joint else len(tasks)
        line = (
            f"This run is incomplete (status: {run.status}): {k} of "
            f"{total} training steps done; the numbers cover only what exists."
        )
        if k and not run.joint:
            line += (
                f" After {tasks[k - 1]}, average {name} over the {k} tasks seen so far is "
                f"{fmt(_mean(R[k][:k]), score)}."
            )
        return [line]
    if run.joint:
        return [
            (
                f"{label} (joint training: all tasks trained together at once) reaches average "
                f"final {name} {fmt(m.avg_accuracy, score)} over {len(tasks)} tasks."
            )
        ]
    lines = [
        (
            f"{label} ends with average final {name} {fmt(m.avg_accuracy, score)} over "
            f"{len(tasks)} tasks (plasticity, the score on each task just after training it: "
            f"{fmt(m.plasticity, score)} on average)."
        )
    ]
    if m.bwt is not None:
        lines.append(
            f"BWT ({BY_KEY['bwt'].meaning}) is {fmt(m.bwt, score)}; forgetting (drop from "
            "each earlier task's best score to its final one, averaged over the "
            f"{len(tasks) - 1} earlier tasks) is {fmt(m.forgetting, score)}."
        )
        lines.append(f"FWT ({BY_KEY['fwt'].meaning}) is {fmt(m.fwt, score)}.")
        per = (m.forgetting_per_task or [])[:-1]
        if per and max(per) > 0:
            j = per.index(max(per))
            sign = 1 if run.higher_is_better else -1
            best = sign * max(sign * R[i][j] for i in range(j + 1, len(tasks)))
            lines.append(
                f"It forgot {tasks[j]} most ({name} {fmt(best, score)} at best after "
                f"training it, {fmt(R[-1][j], score)} at the end)."
            )
        else:
            lines.append("It forgot none of the earlier tasks.")
    loss = _loss_sentence(run)
    return lines + ([loss] if loss else [])


def _warning_lines(record: Record) -> list[str]:
    seen: dict[str, list[str]] = {}
    if isinstance(record, RunRecord):
        for w in record.warnings:
            seen.setdefault(str(w), [])
    else:
        for label, run in record.runs.items():
            for w in run.warnings:
                seen.setdefault(str(w), []).append(label)
    n_runs = len(record.runs)
    out = []
    for w, labels in seen.items():
        who = "" if not labels or len(labels) == n_runs else f" ({', '.join(labels)})"
        out.append(f"Warning{who}: {w}")
    return out


def summary_lines(record: Record | dict[str, Any]) -> list[str]:
    """The report's conclusions in plain words, one sentence group per line.

    For a comparison: joint training's average, for each other strategy its distance to joint
    training and what it lost of each earlier task, the best non-joint strategy and the accuracy on
    classes absent from the last task. For a single run: its average final score, BWT, forgetting,
    FWT and the task it forgot most. Warnings from the record come last.

    Examples:
        >>> run = {"kind": "run", "strategy": "finetune", "tasks": ["a", "b"], "score": "accuracy",
        ...        "matrix": [[0, 0], [0.9, 0], [0.3, 0.8]], "status": "running", "metrics": {}}
        >>> summary_lines(run)[0][:24]
        'This run is incomplete ('
    """
    record = as_record(record)
    if isinstance(record, CompareRecord):
        return _compare_lines(record) + _warning_lines(record)
    lines = _run_lines(record)
    return lines + _warning_lines(record)
