"""What a report says, as a list of format-neutral blocks (rendered by :mod:`retain.report.render`).

Markdown and HTML are both built from :func:`build_blocks`, so the two formats never disagree.
Only the standard library and :mod:`retain.eval.metrics` are imported.
"""

from __future__ import annotations

import json
import re
from typing import Any

from retain.eval import metrics as M
from retain.report.summary import (
    MEANINGS,
    Record,
    best_strategy,
    class_accuracy,
    class_label,
    fmt,
    is_complete,
    pooled_accuracy,
    report_title,
    row_labels,
    runs_of,
    score_name,
    summary_lines,
    vanished_classes,
)

# One report element: ("h", level, text), ("p", text), ("note", text), ("ul", [items]),
# ("table", header, rows, row_classes) or ("img", plot key, caption).
Block = tuple[Any, ...]

SETTINGS = {
    "class_il": "class-incremental: one output head over every class, the task is not given at "
    "test time",
    "task_il": "task-incremental: the task is known at test time, only its classes compete",
    "domain_il": "domain-incremental: the same outputs throughout while the inputs shift",
}
METRIC_KEYS = ("avg_accuracy", "bwt", "fwt", "forgetting", "plasticity", "gap_to_joint")
CSV_FIELDS = ("strategy", "score", *METRIC_KEYS, "train_seconds", "hook_seconds", "samples_per_s",
              "peak_rss_mb")
MAX_CLASS_COLUMNS = 20  # wider per-class tables per training step would not fit a page
# Scores where lower is better, for the extra matrices (the record states only the main score's).
LOWER_IS_BETTER = frozenset({"mse", "loss", "perplexity"})
SCORES_HEAD = ("BWT", "FWT", "forgetting", "plasticity", "gap to joint")
COSTS_HEAD = ("train s", "strategy s", "samples/s", "peak RSS MB")
TIMING_HEAD = ("strategy", "task", "steps", "samples", "train s", "strategy s", "eval s",
               "samples/s")

METRICS_NOTE = (
    "One row per strategy; definitions and denominators are at the end. The best non-joint "
    "strategy is in bold. train s: the training loop; strategy s: the strategies' work between "
    "tasks (Fisher passes, buffer selection, generator training)."
)
MATRIX_NOTE = (
    'Row "after tk" is the model after training task k; each column is the score on one task\'s '
    "test set. The diagonal is plasticity; what happens below it is forgetting."
)
EXTRA_NOTE = (
    "Final score on each task and summary metrics for every other score computed; full matrices "
    "are in matrix.csv."
)
PER_CLASS_NOTE = (
    "Accuracy per class over the union of all tasks' test sets (correct predictions summed over "
    "tasks, divided by the class's test samples summed over tasks). Classes absent from the last "
    "task's test data are marked: a strategy that forgets loses them, joint training keeps them."
)
STATE_NOTE = (
    "What each strategy keeps after each task (memory buffers and their bytes, Fisher or "
    "importance sizes, columns or stages added) and the model's parameter count, which grows "
    "for architectural strategies."
)
DEFINITIONS_NOTE = (
    "R has T + 1 rows and T columns: row 0 is the untrained model, row i the model after training "
    "task i, column j the score on task j's test set (from retain.eval.metrics). BWT, FWT and "
    "forgetting average over T - 1 tasks: the last task has had no chance to be forgotten."
)
LOWER_NOTE = (
    "{name} is better when lower: BWT, FWT and forgetting are computed on -R, so negative BWT and "
    "positive forgetting still mean something was lost; averages stay in the score's own units."
)



# --------------------------------------------------------------------------- document


def metric_definitions() -> list[tuple[str, str, str]]:
    """(metric, formula, denominator) rows, read from the table in ``retain.eval.metrics``."""
    names = "avg_accuracy|bwt|fwt|forgetting|plasticity"
    pattern = re.compile(rf"^({names})\s+(.+?)\s{{2,}}(T(?: - 1)?)$")
    lines = (M.__doc__ or "").splitlines()
    return [m.groups() for m in map(pattern.match, map(str.rstrip, lines)) if m]


def _metrics_row(label: str, run: Record) -> list[str]:
    m, score = run.get("metrics") or {}, run.get("score")
    timing = run.get("timing") or {}
    cells = [label + ("" if is_complete(run) else " (incomplete)")]
    cells += [fmt(m.get(k), score) for k in METRIC_KEYS]
    secs, rate = timing.get("train_seconds"), timing.get("samples_per_s")
    rss = (run.get("memory") or {}).get("peak_rss_mb")
    cells += [
        f"{secs:.2f}" if secs is not None else "–",
        f"{timing.get('hook_seconds', 0.0):.2f}",
        f"{rate:,.0f}" if rate else "–",
        f"{rss:.0f}" if rss is not None else "–",
    ]
    return cells


def _matrix_table(run: Record, key: str) -> Block:
    R = (run.get("matrices") or {}).get(key) or (
        run.get("matrix") if key == run.get("score") else []
    )
    rows = [[lab] + [fmt(v, key) for v in row] for lab, row in zip(row_labels(run), R)]
    return ("table", ["model", *(run.get("tasks") or [])], rows, None)


def _head_blocks(record: Record, runs: dict[str, Record]) -> list[Block]:
    stream, tasks = record.get("stream") or {}, record.get("tasks") or []
    score, higher = record.get("score"), record.get("higher_is_better", True)
    title = report_title(record)
    blocks: list[Block] = [("h", 1, f"retain report: {title}")]
    if record.get("kind") == "compare":
        what = f"Comparison of {len(runs)} strategies trained on the same stream from the same "
        blocks.append(("p", what + f"initial weights: {', '.join(runs)}."))
    else:
        joint = " (joint training: all tasks at once)" if record.get("joint") else ""
        blocks.append(("p", f"Strategy: {record.get('strategy')}{joint}"))
    unfinished = [label for label, r in runs.items() if not is_complete(r)]
    if unfinished:
        note = f"Incomplete: {', '.join(unfinished)} did not finish (status: running or "
        blocks.append(
            ("note", note + "interrupted). What follows covers the rows computed so far.")
        )
    setting = stream.get("setting")
    items = [
        f"{stream.get('name', 'stream')}: {len(tasks)} tasks ({', '.join(tasks)})",
        f"setting: {setting} ({SETTINGS.get(setting, 'see the stream documentation')})",
        f"objective: {stream.get('objective')}",
        f"score: {score_name(score)} ({'higher' if higher else 'lower'} is better)",
    ]
    if record.get("split") == "val":
        items.append("evaluated on each task's validation split, not its test set "
                     "(eval.split=val): where the notes below say test set, read validation split")
    classes = next(iter(runs.values()), {}).get("task_classes") or []
    if any(c is not None for c in classes):
        items.append(
            "classes per task: "
            + "; ".join(
                f"{t}: {', '.join(class_label(record, c) for c in cs)}"
                for t, cs in zip(tasks, classes)
                if cs is not None
            )
        )
    return blocks + [("h", 2, "Stream"), ("ul", items)]


def _per_class_blocks(record: Record, runs: dict[str, Record]) -> list[Block]:
    runs = {label: r for label, r in runs.items() if r.get("per_class")}
    if not runs:
        return []
    first = next(iter(runs.values()))
    gone = set(vanished_classes(record, first))
    finals = {label: (class_accuracy(r) or [[]])[-1] for label, r in runs.items()}
    n = len(first["per_class"]["counts"][0][0])
    blocks: list[Block] = [("h", 2, "Per-class accuracy"), ("p", PER_CLASS_NOTE)]
    rows, classes = [], []
    for c in range(n):
        if all(finals[label][c] is None for label in finals):
            continue  # a class no test set contains has no accuracy to report
        mark = "vanished from the last task" if c in gone else "present"
        rows.append([class_label(record, c), mark] + [fmt(finals[lab][c]) for lab in finals])
        classes.append("vanished" if c in gone else None)
    if gone:
        rows.append(
            [f"all {len(gone)} vanished classes", "pooled"]
            + [fmt(pooled_accuracy(r, sorted(gone))) for r in runs.values()]
        )
        classes.append("vanished")
    blocks.append(
        ("table", ["class", "in last task?", *(f"{lab} (final)" for lab in finals)], rows, classes)
    )
    if n <= MAX_CLASS_COLUMNS:
        for label, run in runs.items():
            acc = class_accuracy(run)
            blocks.append(("h", 3, f"{label}: per-class accuracy after each step"))
            rows = [[lab] + [fmt(v) for v in row] for lab, row in zip(row_labels(run), acc)]
            head = ["model", *(class_label(record, c) for c in range(n))]
            blocks.append(("table", head, rows, None))
    return blocks


def _timing_cells(t: dict[str, Any]) -> list[str]:
    return [
        f"{t.get('train_seconds', 0):.2f}",
        f"{t.get('hook_seconds', 0):.2f}",
        f"{t.get('eval_seconds', 0):.3f}",
        f"{t.get('samples_per_s', 0):,.0f}",
    ]


def _timing_blocks(runs: dict[str, Record]) -> list[Block]:
    rows = []
    for label, run in runs.items():
        timing = run.get("timing") or {}
        for t in timing.get("per_task") or []:
            steps, samples = str(t.get("steps", "–")), str(t.get("samples", "–"))
            rows.append([label, str(t.get("task")), steps, samples, *_timing_cells(t)])
        if timing.get("per_task"):
            rows.append([label, "total", "", "", *_timing_cells(timing)])
    return [("h", 2, "Training time"), ("table", TIMING_HEAD, rows, None)] if rows else []


def _state_cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return ", ".join(_state_cell(v) for v in value)
    return str(value)


def _state_blocks(runs: dict[str, Record]) -> list[Block]:
    """What each strategy holds after each task: memory (buffer, Fisher) and model growth."""
    rows = []
    for label, run in runs.items():
        params = (run.get("params") or {}).get("after_task") or []
        for i, per_task in enumerate(run.get("strategy_stats") or []):
            task = (run.get("tasks") or [])[i] if i < len(run.get("tasks") or []) else str(i + 1)
            if run.get("joint"):
                task = "joint"
            items = [f"{name}.{k}={_state_cell(v)}" for name, stats in per_task.items()
                     for k, v in stats.items()]
            if items or (params and len(set(params)) > 1):
                rows.append([label, task, f"{params[i]:,}" if i < len(params) else "",
                             "; ".join(items)])
    if not rows:
        return []
    return [("h", 2, "Strategy state"), ("p", STATE_NOTE),
            ("table", ["strategy", "after", "model parameters", "state"], rows, None)]


def _definition_blocks(record: Record) -> list[Block]:
    rows = [[k, formula, den, MEANINGS[k]] for k, formula, den in metric_definitions()]
    rows.append(
        ["gap_to_joint", "avg_accuracy(joint) - avg_accuracy", "", MEANINGS["gap_to_joint"]]
    )
    blocks: list[Block] = [
        ("h", 2, "Metric definitions"),
        ("p", DEFINITIONS_NOTE),
        ("table", ["metric", "formula", "denominator", "meaning"], rows, None),
    ]
    if not record.get("higher_is_better", True):
        blocks.append(("p", LOWER_NOTE.format(name=score_name(record.get("score")))))
    return blocks


def _repro_blocks(record: Record, runs: dict[str, Record]) -> list[Block]:
    first = next(iter(runs.values()), {})
    versions = record.get("versions") or first.get("versions") or {}
    items = [
        f"seed: {record.get('seed', first.get('seed'))}",
        f"git sha: {record.get('git_sha') or first.get('git_sha') or 'unknown'}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"device: {first.get('device', 'unknown')} × {first.get('num_processes', 1)}",
    ]
    if first.get("train"):
        items.append("training: " + ", ".join(f"{k}={v}" for k, v in first["train"].items()))
    for label, run in runs.items():
        spec = json.dumps(run.get("strategies") or [], ensure_ascii=False)
        items.append(
            f"strategy {label}: {spec}; started {run.get('started', '?')}, finished "
            f"{run.get('finished') or 'not yet'}, status {run.get('status', '?')}"
        )
    return [("h", 2, "Reproducibility"), ("ul", items)]


def build_blocks(record: Record) -> list[Block]:
    runs = runs_of(record)
    score = record.get("score")
    blocks = _head_blocks(record, runs)
    blocks += [("h", 2, "Summary"), ("ul", summary_lines(record))]
    head = ["strategy", f"avg {score_name(score)}", *SCORES_HEAD, *COSTS_HEAD]
    rows = [_metrics_row(label, r) for label, r in runs.items()]
    best = best_strategy(record)
    blocks += [
        ("h", 2, "Metrics"),
        ("table", head, rows, ["best" if lab == best else None for lab in runs]),
        ("p", METRICS_NOTE),
    ]
    blocks += [
        ("img", "compare-bars", "Average final score per strategy"),
        ("img", "compare-curves", "Average score over the tasks seen so far"),
    ]
    blocks.append(("h", 2, f"Score matrices ({score_name(score)})"))
    blocks.append(("p", MATRIX_NOTE))
    for label, run in runs.items():
        blocks += [
            ("h", 3, label),
            _matrix_table(run, run.get("score")),
            ("img", f"heatmap-{label}", f"{label}: score matrix"),
            ("img", f"curves-{label}", f"{label}: score on each task over the sequence"),
        ]
    extra = [k for k in (next(iter(runs.values()), {}).get("matrices") or {}) if k != score]
    if extra:
        blocks += [("h", 2, "Other scores"), ("p", EXTRA_NOTE)]
    for key in extra:
        tasks = record.get("tasks") or []
        rows = []
        for label, run in runs.items():
            R = (run.get("matrices") or {}).get(key) or []
            m = (run.get("metrics_by_score") or {}).get(key) or {}
            rows.append(
                [label]
                + [fmt(v, key) for v in (R[-1] if R else [])]
                + [fmt(m.get(k), key) for k in ("avg_accuracy", "bwt", "forgetting")]
            )
        better = "lower" if key in LOWER_IS_BETTER else "higher"
        blocks += [
            ("h", 3, f"{score_name(key)} ({better} is better)"),
            ("table", ["strategy", *tasks, "avg", "BWT", "forgetting"], rows, None),
        ]
    blocks += _per_class_blocks(record, runs)
    blocks += _state_blocks(runs)
    blocks += _timing_blocks(runs)
    blocks += _definition_blocks(record)
    return blocks + _repro_blocks(record, runs)
