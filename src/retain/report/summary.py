"""The report in words: :func:`summary_lines` and the record helpers it needs.

The plain-words conclusions are shared by every rendering (report.md, report.html, the terminal
summary in :mod:`retain.report.console`), so they live here with the small record helpers they
need (also used by the renderer and the plots). Only the standard library is imported, so
``retain.report.render`` stays cheap to import.
"""

from __future__ import annotations

import math
from typing import Any

from retain.report.columns import ACCURACY_LIKE, BY_KEY, fmt, score_name
from retain.report.record import CompareRecord, Record, RunRecord, record_from_dict
from retain.report.suites import change_words, guard_sentence, spoken_score, suite_sentence

__all__ = [
    "as_record",
    "best_strategy",
    "class_accuracy",
    "class_label",
    "data_line",
    "fmt",
    "last_task_classes",
    "pooled_accuracy",
    "report_title",
    "row_labels",
    "score_name",
    "standard_error",
    "summary_lines",
    "vanished_classes",
]

MAX_LISTED_TASKS = 8  # beyond this, the per-task loss sentence names only the worst tasks
# A task is flagged as poorly learnt when its accuracy just after training it is this far below
# joint training's on the same task, or (with no joint run to compare) below LOW_ACCURACY.
LOW_PLASTICITY_GAP = 0.10
LOW_ACCURACY = 0.5


# --------------------------------------------------------------------------- record helpers


def as_record(record: Record | dict[str, Any]) -> Record:
    """A typed record; a ``dict`` (parsed ``result.json``) is checked and converted."""
    return record if isinstance(record, (RunRecord, CompareRecord)) else record_from_dict(record)


def row_labels(run: RunRecord) -> list[str]:
    """Labels of the rows of a run's matrix: "untrained" (or "pretrained"), "after t1", ...
    (joint: "after joint")."""
    after = ["joint"] if run.joint else list(run.tasks)
    return ([run.initial or "untrained"] + [f"after {t}" for t in after])[: len(run.matrix)]


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


def last_task_classes(run: RunRecord) -> set[int] | None:
    """The classes the last task trains on: its recorded classes (a split stream), else the
    classes in its test data (streams that share one label space); ``None`` when unknown."""
    if run.task_classes and run.task_classes[-1] is not None:
        return set(run.task_classes[-1])
    counts = run.per_class.counts if run.per_class is not None else []
    if not counts:
        return None
    return {c for c, n in enumerate(counts[-1][-1]) if n}


def test_sizes(run: RunRecord) -> list[int] | None:
    """Rows in each task's evaluated split: from the record's data facts, else the per-class test
    counts; ``None`` when the record holds neither."""
    tasks = (run.data or {}).get("tasks")
    key = "validation" if run.split == "val" else "test"
    if tasks and len(tasks) == len(run.tasks) and all(key in t for t in tasks):
        return [int(t[key]) for t in tasks]
    if run.per_class is not None and run.per_class.counts:
        return [sum(c) for c in run.per_class.counts[0]]
    return None


def standard_error(p: float, n: int) -> float | None:
    """Binomial standard error of an accuracy ``p`` measured on ``n`` samples."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n > 0 else None


def mean_standard_error(ps: list[float], ns: list[int]) -> float | None:
    """Standard error of the mean of independent accuracies ``ps`` on ``ns`` samples each."""
    ses = [standard_error(p, n) for p, n in zip(ps, ns)]
    if not ses or any(se is None for se in ses):
        return None
    return math.sqrt(sum(se * se for se in ses if se is not None)) / len(ses)


def data_line(record: Record) -> str:
    """One line on the data a record was trained on (empty when the record does not say)."""
    run = next((r for r in record.runs.values() if r.data), None)
    if run is None or run.data is None:
        return ""
    data = run.data
    parts = [", ".join(source_name(s) for s in data.get("sources") or []) or "data"]
    target = data.get("target")
    if target:
        auto = " (chosen automatically)" if target.get("chosen_automatically") else ""
        parts.append(f"target {target.get('column')}{auto}")
    tasks = data.get("tasks") or []
    text = data.get("text")
    lm = text and text.get("objective") != "classification"
    unit = f"blocks of {text.get('block_size')} tokens" if lm else "rows"
    if tasks:
        for key in ("train", "validation", "test"):
            sizes = [int(t.get(key, 0)) for t in tasks]
            lo, hi = min(sizes), max(sizes)
            if hi == 0:
                continue  # no validation split
            parts.append(f"{key} {lo}" + (f"–{hi}" if hi != lo else "") + f" {unit} per task")
    if not text:  # token ids are never rescaled
        parts.append("standardised" if data.get("standardized") else "not standardised")
    return "Data: " + "; ".join(parts) + "."


def source_name(source: dict[str, Any]) -> str:
    """A data source as written in the record: built-in name, file (and checksum) or folder."""
    if "builtin" in source:
        return f"built-in dataset {source['builtin']}"
    if "file" in source:
        sha = source.get("sha256")
        return f"{source['file']}" + (f" (SHA-256 {sha[:12]}…)" if sha else "")
    return str(source.get("folder", source))


def pooled_accuracy(run: RunRecord, classes: list[int]) -> float | None:
    """Final accuracy over the test samples of ``classes`` taken together."""
    pc = run.per_class
    if pc is None or not pc.counts:
        return None
    hits = sum(t[c] for t in pc.correct[-1] for c in classes)
    total = sum(t[c] for t in pc.counts[-1] for c in classes)
    return hits / total if total else None


# --------------------------------------------------------------------------- summary


def _changes(run: RunRecord, key: str | None = None) -> list[tuple[str, float, float]]:
    """(task, score just after training it, final score) for every earlier task; ``key``: of
    another score matrix than the run's own."""
    R, tasks = (run.matrices.get(key) or []) if key else run.matrix, run.tasks
    n_tasks = len(tasks)
    if run.joint or n_tasks < 2 or len(R) < n_tasks + 1:
        return []
    own = run.metrics.plasticity_per_task if run.metrics and not key else None
    diag = own or [R[i + 1][i] for i in range(n_tasks)]
    return [(tasks[j], diag[j], R[n_tasks][j]) for j in range(n_tasks - 1)]


def _plasticity_line(label: str, run: RunRecord, joint: RunRecord | None) -> str:
    """A warning when some task was not learnt well right after training it (accuracy only)."""
    if run.score not in ACCURACY_LIKE or run.joint or run.metrics is None:
        return ""
    diag = run.metrics.plasticity_per_task or []
    ref = joint.matrix[-1] if joint is not None and len(joint.matrix) > 1 else None
    low = []
    for j, (task, v) in enumerate(zip(run.tasks, diag)):
        if ref is not None and j < len(ref):
            if ref[j] - v > LOW_PLASTICITY_GAP:
                low.append(f"{task} {fmt(v)} (joint training: {fmt(ref[j])})")
        elif v < LOW_ACCURACY:
            low.append(f"{task} {fmt(v)}")
    if not low:
        return ""
    why = (
        f"more than {LOW_PLASTICITY_GAP * 100:.0f} percentage points below joint training on the same "
        "task"
        if ref is not None
        else f"below {fmt(LOW_ACCURACY)}"
    )
    return (
        f"Low plasticity: {label} did not learn every task well even right after training it "
        f"({'; '.join(low)}; flagged: {why}). Its forgetting is measured from these low scores. "
        "Likely causes: too little training per task (raise train.epochs or train.lr), or a "
        "strategy that holds the old weights back by design."
    )


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
        # Changes in accuracy are told in percentage points (0.451 -> 0.000 is 45 points, and all
        # of the task): a relative "45%" would read as "45% of what it knew".
        groups: dict[str, list[str]] = {"lost": [], "gained": [], "kept": []}
        unit = "percentage points"  # named in full once, then "points"
        for task, before, after in shown:
            pts = round(abs(after - before) * 100)
            arrow = f"({fmt(before, score)} → {fmt(after, score)})"
            if pts == 0:
                groups["kept"].append(f"{task} {arrow}")
            elif after < before and fmt(after, score) == fmt(0.0, score):
                groups["lost"].append(f"all of {task} {arrow}")
            else:
                word = unit if pts != 1 else unit[:-1]
                unit = "points"
                groups["lost" if after < before else "gained"].append(
                    f"{pts} {word} on {task} {arrow}"
                )
        parts = [f"{verb} {', '.join(items)}" for verb, items in groups.items() if items]
        return f"It {'; '.join(parts)}{tail}."
    # A language model's loss is told as perplexity, the number people read and compare.
    spoken = spoken_score(score, set(run.matrices))
    if spoken != score:
        words = {c[0]: c for c in _changes(run, spoken)}
        shown = [words.get(task, (task, b, a)) for task, b, a in shown]
        score = spoken
    name = score_name(score)
    clauses = [f"{name} on {task} {change_words(score, b, a)}" for task, b, a in shown]
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
        words = (head, _loss_sentence(run), suite_sentence(run), guard_sentence(run))
        lines.append(" ".join(s for s in words if s))
        low = _plasticity_line(label, run, runs[joint] if joint else None)
        if low:
            lines.append(low)
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
    ppl = run.metrics_by_score.get("perplexity") if score == "loss" else None
    if ppl is not None:  # a language model: the loss's number people read
        lines.append(
            f"In perplexity: average final {fmt(ppl.avg_accuracy, 'perplexity')} over the tasks "
            "(lower is better)."
        )
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
            # A language model's loss is told as perplexity (its exponential: same best row).
            said = spoken_score(score, set(run.matrices))
            S = run.matrices.get(said) or R
            i = max(range(j + 1, len(tasks)), key=lambda i: sign * R[i][j])
            lines.append(
                f"It forgot {tasks[j]} most ({score_name(said)} {fmt(S[i][j], said)} at best "
                f"after training it, {fmt(S[-1][j], said)} at the end)."
            )
        else:
            lines.append("It forgot none of the earlier tasks.")
    loss = _loss_sentence(run)
    low = _plasticity_line(label, run, None)
    return lines + [s for s in (loss, low, suite_sentence(run), guard_sentence(run)) if s]


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
    lines = _seeds_lines(record)
    if isinstance(record, CompareRecord):
        return lines + _compare_lines(record) + _warning_lines(record)
    return lines + _run_lines(record) + _warning_lines(record)


def _seeds_lines(record: Record) -> list[str]:
    """For runs over several seeds: that the numbers are means, and how far the seeds spread."""
    spread = next((r.spread for r in record.runs.values() if r.spread is not None), None)
    if spread is None or len(spread.seeds) < 2:
        return []
    seeds = ", ".join(map(str, spread.seeds))
    line = (
        f"Every number is the mean over {len(spread.seeds)} seeds ({seeds}); ± is the standard "
        "deviation across the seeds."
    )
    stds = [
        (label, r.spread.metrics_std.get("avg_accuracy"))
        for label, r in record.runs.items()
        if r.spread is not None
    ]
    widest = max(stds, key=lambda p: p[1] or 0.0)
    if widest[1] is not None and len(stds) > 1:
        line += (
            f" The widest spread of the average is {fmt(widest[1], record.score)} ({widest[0]}): "
            "differences between strategies smaller than their spreads are not reliable."
        )
    return [line]
