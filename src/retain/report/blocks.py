"""What a report says, as a list of format-neutral blocks (rendered by :mod:`retain.report.render`).

Markdown and HTML are both built from :func:`build_blocks`, so the two formats never disagree.
Only the standard library is imported. The metrics table's columns come from
:mod:`retain.report.columns`, shared with the terminal table and metrics.csv.
"""

from __future__ import annotations

import json
from typing import Any

from retain.report import tradeoff
from retain.report.adapters import routing_blocks
from retain.report.columns import (
    ACCURACY_LIKE,
    METRIC_COLUMNS,
    Column,
    columns_for,
    fmt,
    rate,
    score_name,
)
from retain.report.curriculum import curriculum_blocks
from retain.report.merging import sweep_blocks
from retain.report.page import heat, settings_blocks
from retain.report.record import Record, RunRecord, TaskTiming, Timing
from retain.report.suites import guard_blocks, suite_blocks
from retain.report.summary import (
    best_strategy,
    class_accuracy,
    class_label,
    last_task_classes,
    mean_standard_error,
    pooled_accuracy,
    report_title,
    row_labels,
    source_name,
    standard_error,
    summary_lines,
    test_sizes,
    vanished_classes,
)
from retain.report.vocab import vocab_blocks

# One report element: ("h", level, text), ("p", text), ("note", text), ("ul", [items]),
# ("table", header, rows, row_classes[, table class[, heat]]), ("img", image, caption) or
# ("details", summary, text). A table of class "text" holds prose: left-aligned, wrapped; a
# "heat" table's cells are coloured by ``heat`` (:func:`heat`). An image is a plot key, or a path
# relative to the report's folder (a figure another command wrote into the run directory); a
# renderer shows every image it can find and skips the others. "details" is preformatted text a
# reader opens on demand (the run's settings).
Block = tuple[Any, ...]

SETTINGS = {
    "class_il": "class-incremental: one output head over every class, the task is not given at "
    "test time",
    "task_il": "task-incremental: the task is known at test time, only its classes compete",
    "domain_il": "domain-incremental: the same outputs throughout while the inputs shift",
}
MAX_CLASS_COLUMNS = 20  # wider per-class tables per training step would not fit a page
# Scores where lower is better, for the extra matrices (the record states only the main score's).
LOWER_IS_BETTER = frozenset({"mse", "loss", "perplexity"})
TIMING_HEAD = (
    "strategy",
    "task",
    "steps",
    "samples",
    "train s",
    "strategy s",
    "eval s",
    "samples/s",
)

METRICS_NOTE = (
    "One row per strategy; definitions and denominators are at the end. The best non-joint "
    "strategy is in bold. train s: the training loop; strategy s: the strategies' work between "
    "tasks (Fisher passes, buffer selection, generator training). peak RSS MB is the peak "
    "resident memory of the whole process up to the end of that strategy's run, not of the "
    "strategy alone: strategies compared in one process run one after another, so a later one "
    "shows at least the peak of those before it."
)
MATRIX_NOTE = (
    'Row "after tk" is the model after training task k; each column is the score on one task\'s '
    "test set. The diagonal is plasticity; what happens below it is forgetting."
)
SE_NOTE = (
    "± is the standard error of each accuracy from its test set's size n alone, sqrt(p(1 - p) / "
    "n) (binomial): with n = {n_min}{n_range} test rows per task, scores closer than about two "
    "standard errors are not reliably different. The average's standard error, sqrt(Σ SE_j²) / "
    "T, treats tasks as independent. It does not include the variation between seeds."
)
SEEDS_NOTE = (
    "Trained once per seed ({seeds}; each run is in its seed-<s> folder): every score and metric "
    "is the mean over the {n} seeds, and ± is the sample standard deviation across them. The "
    "seed draws the data split and order, the initial weights and the strategies' random choices."
)
DATA_NOTE = (
    "What the run was trained and tested on, as recorded when the data was read (the full "
    "standardisation statistics are in result.json under data)."
)
MAX_LISTED_STATS = 8  # per-feature statistics beyond this are left to result.json
EXTRA_NOTE = (
    "Final score on each task and summary metrics for every other score computed; full matrices "
    "are in matrix.csv."
)
PER_CLASS_NOTE = (
    "Accuracy per class over the union of all tasks' test sets (correct predictions summed over "
    'tasks, divided by the class\'s test samples summed over tasks). "in last task?" says whether '
    "the last task trains on the class (the task's classes in a split stream, else the classes in "
    "its test data). Where every task shares one label space, a class missing from the last task "
    "is marked vanished: a strategy that forgets loses it, joint training keeps it."
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


def _metrics_row(label: str, run: RunRecord, columns: tuple[Column, ...]) -> list[str]:
    cells = [label + ("" if run.complete else " (incomplete)")]
    return cells + [c.cell(run) for c in columns]


def _matrix_table(run: RunRecord, key: str) -> Block:
    R = run.matrices.get(key) or (run.matrix if key == run.score else [])
    S = run.matrix_std(key)  # over seeds; else the binomial standard error of one test set
    sizes = test_sizes(run) if key in ACCURACY_LIKE and S is None else None

    def cell(v: float, i: int, j: int) -> str:
        se = S[i][j] if S else standard_error(v, sizes[j]) if sizes and j < len(sizes) else None
        return fmt(v, key) if se is None else f"{fmt(v, key)} ± {fmt(se, key)}"

    rows = [
        [lab] + [cell(v, i, j) for j, v in enumerate(row)]
        for i, (lab, row) in enumerate(zip(row_labels(run), R))
    ]
    higher = run.higher_is_better if key == run.score else key not in LOWER_IS_BETTER
    return ("table", ["model", *run.tasks], rows, None, "heat", heat(R, key, higher))


def _se_blocks(run: RunRecord) -> list[Block]:
    """The average final accuracy with its standard error, when the test sizes are known; over
    several seeds, with its std across them and each seed's value."""
    if run.spread is not None and run.metrics is not None and len(run.spread.seeds) > 1:
        avg, std = run.metrics.avg_accuracy, run.spread.metrics_std.get("avg_accuracy")
        each = ", ".join(
            f"{s}: {fmt(v, run.score)}" for s, v in zip(run.spread.seeds, run.spread.avg_per_seed)
        )
        name = score_name(run.score)
        text = f"Average final {name}: {fmt(avg, run.score)} ± {fmt(std, run.score)} "
        return [("p", text + f"(mean ± std over {len(run.spread.seeds)} seeds; {each}).")]
    sizes = test_sizes(run) if run.score in ACCURACY_LIKE else None
    if not sizes or len(run.matrix) < 2 or run.metrics is None:
        return []
    se = mean_standard_error(run.matrix[-1], sizes)
    if se is None:
        return []
    avg = run.metrics.avg_accuracy
    return [("p", f"Average final {score_name(run.score)}: {fmt(avg)} ± {fmt(se)}.")]


def _data_blocks(runs: dict[str, RunRecord]) -> list[Block]:
    """The data the run used, from the record's ``data`` (written when the data was read), and
    how each task's batches were drawn (data mixing, a difficulty order)."""
    mixing = curriculum_blocks(runs)
    run = next((r for r in runs.values() if r.data), None)
    if run is None or run.data is None:
        return [("h", 2, "Data"), *mixing] if mixing else []
    data = run.data
    items = [f"source: {source_name(src)}" for src in data.get("sources") or []]
    for src in data.get("sources") or []:
        if src.get("sha256"):
            items.append(f"SHA-256 of {src['file']}: {src['sha256']}")
    target = data.get("target")
    if target:
        how = (
            "chosen automatically (none was given)"
            if target.get("chosen_automatically")
            else "as configured"
        )
        items.append(f"target column: {target.get('column')} ({how})")
    features = data.get("features")
    if features:
        shown = ", ".join(map(str, features[:MAX_LISTED_STATS]))
        more = f", … ({len(features)} in all)" if len(features) > MAX_LISTED_STATS else ""
        items.append(f"input columns: {shown}{more}")
    for key, what in (("dropped", "columns left out"), ("encoded", "columns encoded")):
        cols = data.get(key) or {}
        if cols:
            items.append(f"{what}: " + "; ".join(f"{c} ({why})" for c, why in cols.items()))
    if not data.get("text"):  # token ids are never rescaled
        items.append(_standardized_item(data.get("standardized")))
    blocks: list[Block] = [("h", 2, "Data"), ("p", DATA_NOTE), ("ul", items)]
    blocks += _text_blocks(data.get("text"))
    tasks = data.get("tasks") or []
    if tasks:
        rows = [
            [t.get("name", ""), t.get("train"), t.get("validation"), t.get("test")] for t in tasks
        ]
        blocks.append(("table", ["task", "train rows", "validation rows", "test rows"], rows, None))
    return blocks + mixing


def _text_blocks(text: dict[str, Any] | None) -> list[Block]:
    """Scenario text: per source, documents, tokens and blocks in each split; the suites."""
    if not text:
        return []
    if text.get("objective") == "classification":
        return _text_classification_blocks(text)
    how = "joined with EOS" if text.get("packing", True) else "one document per block, padded"
    intro = (
        f"Text in blocks of {text.get('block_size')} tokens ({how}), tokenised with "
        f"{text.get('tokenizer')}, split into train/validation/test by document."
    )

    def per_split(counts: dict[str, int] | None) -> str:
        return "/".join(str((counts or {}).get(k, 0)) for k in ("train", "validation", "test"))

    rows = [
        [
            name,
            f.get("kind"),
            per_split(f.get("documents")),
            per_split(f.get("tokens")),
            per_split(f.get("blocks")),
            f.get("tokenized", ""),
        ]
        for name, f in (text.get("sources") or {}).items()
    ]
    head = ["source", "kind", "documents", "tokens", "blocks", "tokens were"]
    head[2:5] = [f"{h} (train/val/test)" for h in head[2:5]]
    blocks: list[Block] = [("p", intro), ("table", head, rows, None)]
    suites = []
    for name, s in (text.get("suites") or {}).items():
        where = (
            f"the test blocks of source {s['source']}"
            if s.get("source")
            else f"{s.get('path')}, read whole ({s.get('documents')} documents)"
        )
        suites.append(f"evaluation suite {name}: {where}, {s.get('blocks')} blocks")
    if suites:
        blocks.append(("ul", suites))
    return blocks


def _text_classification_blocks(text: dict[str, Any]) -> list[Block]:
    """Scenario text with classification sources: per source, the rows and tokens in each split
    and the classes of each task; the suites."""
    intro = (
        f"Text classification: each row one example, tokenised with {text.get('tokenizer')}, "
        f"truncated and padded to {text.get('block_size')} tokens, split into "
        f"train/validation/test by row; {len(text.get('classes') or [])} classes "
        f"({text.get('setting')})."
    )

    def per_split(counts: dict[str, int] | None) -> str:
        return "/".join(str((counts or {}).get(k, 0)) for k in ("train", "validation", "test"))

    rows = []
    for name, f in (text.get("sources") or {}).items():
        classes = f.get("classes") or {}
        rows.append(
            [
                name,
                f.get("label"),
                per_split(f.get("rows")),
                per_split(f.get("tokens")),
                "; ".join(f"{t}: {', '.join(c)}" for t, c in classes.items()),
                f.get("tokenized", ""),
            ]
        )
    head = ["source", "label", "rows (train/val/test)", "tokens (train/val/test)"]
    head += ["classes per task", "tokens were"]
    blocks: list[Block] = [("p", intro), ("table", head, rows, None)]
    suites = []
    for name, s in (text.get("suites") or {}).items():
        where = f"the test rows of source {s['source']}" if s.get("source") else s.get("path")
        suites.append(f"evaluation suite {name}: {where}, {s.get('rows')} rows")
    if suites:
        blocks.append(("ul", suites))
    return blocks


def _stats(values: list[float]) -> str:
    shown = ", ".join(f"{v:.4g}" for v in values[:MAX_LISTED_STATS])
    return f"[{shown}{', …' if len(values) > MAX_LISTED_STATS else ''}]"


def _standardized_item(std: Any) -> str:
    if not std:
        return "standardisation: none (inputs used as read)"
    text = (
        "standardisation: inputs rescaled to mean 0 and standard deviation 1 per feature, with "
        f"statistics from {std.get('statistics_from', 'the first task')}"
    )
    if std.get("mean") is not None:
        text += f"; mean {_stats(std['mean'])}, std {_stats(std.get('std') or [])}"
    if std.get("target"):
        text += f"; target too (mean {std.get('y_mean')}, std {std.get('y_std')})"
    return text


def _head_blocks(record: Record, runs: dict[str, RunRecord]) -> list[Block]:
    stream, tasks, score = record.stream, record.tasks, record.score
    blocks: list[Block] = [("h", 1, f"retain report: {report_title(record)}")]
    if isinstance(record, RunRecord):
        joint = " (joint training: all tasks at once)" if record.joint else ""
        blocks.append(("p", f"Strategy: {record.strategy}{joint}"))
    elif record.extra.get("sources"):  # retain report DIR1 DIR2 ...
        what = f"Comparison of {len(runs)} runs from the run directories "
        blocks.append(
            (
                "p",
                what + f"{', '.join(record.extra['sources'])}: {', '.join(runs)}. They were "
                "scored on the same tasks; each was trained with its own settings (at the end).",
            )
        )
    else:
        what = f"Comparison of {len(runs)} strategies trained on the same stream from the same "
        blocks.append(("p", what + f"initial weights: {', '.join(runs)}."))
    unfinished = [label for label, r in runs.items() if not r.complete]
    if unfinished:
        note = f"Incomplete: {', '.join(unfinished)} did not finish (status: running or "
        blocks.append(
            ("note", note + "interrupted). What follows covers the rows computed so far.")
        )
    setting = stream.setting
    items = [
        f"{stream.name or 'stream'}: {len(tasks)} tasks ({', '.join(tasks)})",
        f"setting: {setting} ({SETTINGS.get(setting or '', 'see the stream documentation')})",
        f"objective: {stream.objective}",
        f"score: {score_name(score)} ({'higher' if record.higher_is_better else 'lower'} is better)",
    ]
    if record.split == "val":
        items.append(
            "evaluated on each task's validation split, not its test set "
            "(eval.split=val): where the notes below say test set, read validation split"
        )
    first = next(iter(runs.values()), None)
    classes = first.task_classes if first is not None else []
    if any(c is not None for c in classes):
        items.append(
            "classes per task: "
            + "; ".join(
                f"{t}: {', '.join(class_label(record, c) for c in cs)}"
                for t, cs in zip(tasks, classes)
                if cs is not None
            )
        )
    blocks += [("h", 2, "Stream"), ("ul", items)]
    spread = next((r.spread for r in runs.values() if r.spread is not None), None)
    if spread is not None:
        seeds = ", ".join(map(str, spread.seeds))
        blocks.append(("note", SEEDS_NOTE.format(seeds=seeds, n=len(spread.seeds))))
    return blocks


def _per_class_blocks(record: Record, runs: dict[str, RunRecord]) -> list[Block]:
    runs = {label: r for label, r in runs.items() if r.per_class is not None}
    if not runs:
        return []
    first = next(iter(runs.values()))
    gone = set(vanished_classes(record, first))
    last = last_task_classes(first)
    finals = {label: (class_accuracy(r) or [[]])[-1] for label, r in runs.items()}
    assert first.per_class is not None
    n = len(first.per_class.counts[0][0])
    blocks: list[Block] = [("h", 2, "Per-class accuracy"), ("p", PER_CLASS_NOTE)]
    rows, classes = [], []
    for c in range(n):
        if all(finals[label][c] is None for label in finals):
            continue  # a class no test set contains has no accuracy to report
        mark = (
            "vanished from the last task"
            if c in gone
            else "present"
            if last is None or c in last
            else "absent"
        )
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


def _timing_cells(t: TaskTiming | Timing, tokens: bool) -> list[str]:
    cells = [
        f"{t.train_seconds:.2f}",
        f"{t.hook_seconds:.2f}",
        f"{t.eval_seconds:.3f}",
        rate(t.samples_per_s),
    ]
    if tokens:
        cells.append("–" if t.tokens_per_s is None else rate(t.tokens_per_s))
    return cells


def _timing_blocks(runs: dict[str, RunRecord]) -> list[Block]:
    rows = []
    tokens = any(r.timing.tokens_per_s is not None for r in runs.values())
    for label, run in runs.items():
        for t in run.timing.per_task:
            steps = "–" if t.steps is None else str(t.steps)
            samples = "–" if t.samples is None else str(t.samples)
            rows.append([label, t.task, steps, samples, *_timing_cells(t, tokens)])
        if run.timing.per_task:
            rows.append([label, "total", "", "", *_timing_cells(run.timing, tokens)])
    head = (*TIMING_HEAD, "tokens/s") if tokens else TIMING_HEAD
    return [("h", 2, "Training time"), ("table", head, rows, None)] if rows else []


def _state_cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return ", ".join(_state_cell(v) for v in value)
    return str(value)


def _state_blocks(runs: dict[str, RunRecord]) -> list[Block]:
    """What each strategy holds after each task: memory (buffer, Fisher) and model growth."""
    rows = []
    for label, run in runs.items():
        params = run.params.after_task
        for i, per_task in enumerate(run.strategy_stats):
            task = run.tasks[i] if i < len(run.tasks) else str(i + 1)
            if run.joint:
                task = "joint"
            items = [
                f"{name}.{k}={_state_cell(v)}"
                for name, stats in per_task.items()
                for k, v in stats.items()
                if not isinstance(v, dict)  # nested records (a merge sweep) have their own blocks
            ]
            if items or (params and len(set(params)) > 1):
                rows.append(
                    [label, task, f"{params[i]:,}" if i < len(params) else "", "; ".join(items)]
                )
    if not rows:
        return []
    return [
        ("h", 2, "Strategy state"),
        ("p", STATE_NOTE),
        ("table", ["strategy", "after", "model parameters", "state"], rows, None),
    ]


def _definition_blocks(record: Record) -> list[Block]:
    rows = [[c.key, c.formula, c.denominator, c.meaning] for c in METRIC_COLUMNS]
    blocks: list[Block] = [
        ("h", 2, "Metric definitions"),
        ("p", DEFINITIONS_NOTE),
        ("table", ["metric", "formula", "denominator", "meaning"], rows, None, "text"),
    ]
    if not record.higher_is_better:
        blocks.append(("p", LOWER_NOTE.format(name=score_name(record.score))))
    return blocks


def _repro_blocks(record: Record, runs: dict[str, RunRecord]) -> list[Block]:
    first = next(iter(runs.values()), RunRecord())
    versions = record.versions or first.versions
    items = [
        f"seed: {record.seed}",
        f"git sha: {first.git_sha or 'unknown'}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"device: {first.device or 'unknown'} × {first.num_processes}",
    ]
    if first.train is not None:
        items.append("training: " + ", ".join(f"{k}={v}" for k, v in first.train.to_dict().items()))
    for label, run in runs.items():
        spec = json.dumps(run.strategies, ensure_ascii=False)
        items.append(
            f"strategy {label}: {spec}; started {run.started or '?'}, finished "
            f"{run.finished or 'not yet'}, status {run.status}"
        )
    return [("h", 2, "Reproducibility"), ("ul", items)]


def _extra_score_blocks(record: Record, runs: dict[str, RunRecord]) -> list[Block]:
    """Final scores and summary metrics of every score other than the main one."""
    first = next(iter(runs.values()), RunRecord())
    extra = [k for k in first.matrices if k != record.score]
    blocks: list[Block] = [("h", 2, "Other scores"), ("p", EXTRA_NOTE)] if extra else []
    for key in extra:
        rows = []
        for label, run in runs.items():
            R = run.matrices.get(key) or []
            m = run.metrics_by_score.get(key)
            summary = (m.avg_accuracy, m.bwt, m.forgetting) if m else (None, None, None)
            rows.append(
                [label]
                + [fmt(v, key) for v in (R[-1] if R else [])]
                + [fmt(v, key) for v in summary]
            )
        better = "lower" if key in LOWER_IS_BETTER else "higher"
        blocks += [
            ("h", 3, f"{score_name(key)} ({better} is better)"),
            ("table", ["strategy", *record.tasks, "avg", "BWT", "forgetting"], rows, None),
        ]
    return blocks


def build_blocks(record: Record) -> list[Block]:
    runs, score = record.runs, record.score
    blocks = _head_blocks(record, runs) + _data_blocks(runs)
    blocks += [("h", 2, "Summary"), ("ul", summary_lines(record))]
    columns = columns_for(list(runs.values()))
    head = ["strategy", *(c.header.format(score=score_name(score)) for c in columns)]
    rows = [_metrics_row(label, r, columns) for label, r in runs.items()]
    best = best_strategy(record)
    blocks += [
        ("h", 2, "Metrics"),
        ("table", head, rows, ["best" if lab == best else None for lab in runs]),
        ("p", METRICS_NOTE),
    ]
    blocks += [
        ("img", "compare-bars", "Average final score per strategy"),
        ("img", "compare-curves", "Average score over the tasks seen so far"),
        *tradeoff.plasticity_blocks(record),
    ]
    blocks.append(("h", 2, f"Score matrices ({score_name(score)})"))
    blocks.append(("p", MATRIX_NOTE))
    sizes = next((s for s in map(test_sizes, runs.values()) if s), None)
    seeded = any(r.spread is not None for r in runs.values())
    if sizes and score in ACCURACY_LIKE and not seeded:
        lo, hi = min(sizes), max(sizes)
        blocks.append(("p", SE_NOTE.format(n_min=lo, n_range=f" to {hi}" if hi != lo else "")))
    for label, run in runs.items():
        blocks += [
            ("h", 3, label),
            _matrix_table(run, run.score),
            *_se_blocks(run),
            ("img", f"heatmap-{label}", f"{label}: score matrix"),
            ("img", f"curves-{label}", f"{label}: score on each task over the sequence"),
            ("img", f"loss-{label}", f"{label}: training loss over the stream"),
        ]
    blocks += _extra_score_blocks(record, runs)
    blocks += suite_blocks(runs, row_labels) + tradeoff.blocks(record) + guard_blocks(runs)
    blocks += vocab_blocks(runs) + routing_blocks(runs) + sweep_blocks(runs)
    blocks += _per_class_blocks(record, runs)
    blocks += _state_blocks(runs)
    blocks += _timing_blocks(runs)
    blocks += _definition_blocks(record)
    return blocks + _repro_blocks(record, runs) + settings_blocks(record, runs)
