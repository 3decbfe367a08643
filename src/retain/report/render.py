"""Render a run or comparison record (``result.json``) as CSV, Markdown, HTML and PNG plots.

Every report is a pure function of the record: nothing here trains or evaluates, so a finished or
interrupted run can be re-rendered at any time. Markdown and HTML are built from one list of blocks
(:func:`_blocks`), so the two formats never disagree. The plain-words conclusions
(:func:`summary_lines`) come from :mod:`retain.report.summary`, shared with the terminal summary.

Only the standard library and :mod:`retain.eval.metrics` are imported here, so rendering a report
does not import torch; matplotlib is imported only when plotting.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import re
from pathlib import Path
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
    row_labels,
    runs_of,
    score_name,
    summary_lines,
    vanished_classes,
)

__all__ = ["render_html", "render_markdown", "summary_lines", "write_atomic", "write_reports"]

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
CSV_FIELDS = ("strategy", "score", *METRIC_KEYS, "train_seconds", "samples_per_s", "peak_rss_mb")
MAX_CLASS_COLUMNS = 20  # wider per-class tables per training step would not fit a page
# Scores where lower is better, for the extra matrices (the record states only the main score's).
LOWER_IS_BETTER = frozenset({"mse", "loss", "perplexity"})
SCORES_HEAD = ("BWT", "FWT", "forgetting", "plasticity", "gap to joint")
COSTS_HEAD = ("train s", "samples/s", "peak RSS MB")
TIMING_HEAD = ("strategy", "task", "steps", "samples", "train s", "eval s", "samples/s")

METRICS_NOTE = (
    "One row per strategy; definitions and denominators are at the end. The best non-joint "
    "strategy is in bold."
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
    title = record.get("name") or stream.get("name") or "run"
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
    gone = set(vanished_classes(first))
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


def _blocks(record: Record) -> list[Block]:
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
    blocks += _timing_blocks(runs)
    blocks += _definition_blocks(record)
    return blocks + _repro_blocks(record, runs)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(record: Record, images: dict[str, Path] | None = None) -> str:
    """The report as Markdown; ``images`` maps plot keys to PNGs in a ``plots/`` folder beside it.

    Examples:
        >>> md = render_markdown({"kind": "run", "strategy": "finetune", "tasks": ["a"],
        ...                       "score": "accuracy", "matrix": [[0.1], [0.9]], "metrics": {}})
        >>> md.splitlines()[0]
        '# retain report: run'
    """
    images = images or {}
    out = []
    for block in _blocks(record):
        kind = block[0]
        if kind == "h":
            out.append("#" * block[1] + " " + block[2])
        elif kind == "p":
            out.append(block[1])
        elif kind == "note":
            out.append(f"> **{block[1]}**")
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in block[1]))
        elif kind == "table":
            _, head, rows, classes = block
            lines = [
                "| " + " | ".join(map(_md_cell, head)) + " |",
                "|" + "|".join("---" for _ in head) + "|",
            ]
            for i, row in enumerate(rows):
                cells = list(map(_md_cell, row))
                if classes and classes[i] == "best":
                    cells[0] = f"**{cells[0]}**"
                lines.append("| " + " | ".join(cells) + " |")
            out.append("\n".join(lines))
        elif kind == "img" and block[1] in images:
            path = images[block[1]]
            out.append(f"![{block[2]}]({path.parent.name}/{path.name})")
    return "\n\n".join(out) + "\n"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#1d2126;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #d0d7de;padding-bottom:.2em}
h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #e4e8ec}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:right;white-space:nowrap}
th{background:#f3f5f7}td:first-child,th:first-child{text-align:left}
tr.best td{font-weight:bold;background:#eef7ee}tr.vanished td{background:#fff4e0}
.note{background:#fff1f0;border-left:4px solid #d1242f;padding:.6em 1em;font-weight:bold}
figure{display:inline-block;margin:.5em 1em .5em 0}figcaption{font-size:.85em;color:#57606a}
img{max-width:100%;height:auto}li{margin:.2em 0}
"""


def render_html(record: Record, images: dict[str, Path] | None = None) -> str:
    """The report as one self-contained HTML page: inline CSS, PNGs embedded as data URIs."""
    images = images or {}
    e = html.escape
    body = []
    for block in _blocks(record):
        kind = block[0]
        if kind == "h":
            body.append(f"<h{block[1]}>{e(block[2])}</h{block[1]}>")
        elif kind == "p":
            body.append(f"<p>{e(block[1])}</p>")
        elif kind == "note":
            body.append(f'<p class="note">{e(block[1])}</p>')
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            _, head, rows, classes = block
            trs = []
            for i, row in enumerate(rows):
                cls = f' class="{classes[i]}"' if classes and classes[i] else ""
                trs.append(f"<tr{cls}>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>")
            body.append(
                "<table><thead><tr>"
                + "".join(f"<th>{e(str(h))}</th>" for h in head)
                + "</tr></thead><tbody>"
                + "".join(trs)
                + "</tbody></table>"
            )
        elif kind == "img" and block[1] in images:
            data = base64.b64encode(Path(images[block[1]]).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{e(block[2])}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(block[2])}</figcaption></figure>"
            )
    title = e(record.get("name") or (record.get("stream") or {}).get("name") or "run")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>retain report: {title}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# --------------------------------------------------------------------------- files


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write a file atomically (temporary file in the same folder, then a rename).

    A reader (a browser refreshing report.html during training) never sees half a file. Kept here
    rather than using ``retain.utils.state.write_text`` because that module imports torch.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)
    return path


def _csv(rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _cell(value: Any) -> Any:
    return "" if value is None else value


def metrics_rows(record: Record) -> list[list[Any]]:
    """metrics.csv: a header and one row per strategy at full precision; empty cell for None."""
    rows: list[list[Any]] = [list(CSV_FIELDS)]
    for label, run in runs_of(record).items():
        m, timing = run.get("metrics") or {}, run.get("timing") or {}
        rows.append(
            [label, run.get("score")]
            + [_cell(m.get(k)) for k in METRIC_KEYS]
            + [
                _cell(timing.get("train_seconds")),
                _cell(timing.get("samples_per_s")),
                _cell((run.get("memory") or {}).get("peak_rss_mb")),
            ]
        )
    return rows


def matrix_rows(record: Record) -> list[list[Any]]:
    """matrix.csv in long format: strategy, matrix, after_task (0 = untrained), task, value."""
    rows: list[list[Any]] = [["strategy", "matrix", "after_task", "task", "value"]]
    for label, run in runs_of(record).items():
        tasks = run.get("tasks") or []
        after = ["joint"] if run.get("joint") else tasks
        matrices = run.get("matrices") or {run.get("score"): run.get("matrix") or []}
        for key, R in matrices.items():
            for i, row in enumerate(R):
                for j, value in enumerate(row):
                    rows.append([label, key, 0 if i == 0 else after[i - 1], tasks[j], value])
    return rows


def write_reports(out: Path, record: Record, plots: bool = True) -> list[Path]:
    """Write metrics.csv, matrix.csv, plots/*.png, report.md and report.html into ``out``.

    Works for a run record and a comparison record, finished or not (an incomplete record renders
    the rows computed so far and says it is incomplete).

    Args:
        out: the run directory (created if missing).
        record: the contents of ``result.json``.
        plots: draw the PNG plots (matplotlib) and embed them in the HTML report.

    Returns:
        The paths written.

    Examples:
        >>> import tempfile
        >>> rec = {"kind": "run", "strategy": "finetune", "tasks": ["a", "b"], "score": "accuracy",
        ...        "matrix": [[0, 0], [0.9, 0.1], [0.3, 0.8]], "metrics": {"avg_accuracy": 0.55}}
        >>> [p.name for p in write_reports(Path(tempfile.mkdtemp()), rec, plots=False)]
        ['metrics.csv', 'matrix.csv', 'report.md', 'report.html']
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        write_atomic(out / "metrics.csv", _csv(metrics_rows(record))),
        write_atomic(out / "matrix.csv", _csv(matrix_rows(record))),
    ]
    images: dict[str, Path] = {}
    if plots:
        from retain.report.plots import plot_all

        images = plot_all(record, out / "plots")
        written += list(images.values())
    written.append(write_atomic(out / "report.md", render_markdown(record, images)))
    written.append(write_atomic(out / "report.html", render_html(record, images)))
    return written
