"""Render a run or comparison record (``result.json``) as CSV, Markdown, HTML and PNG plots.

Every report is a pure function of the record: nothing here trains or evaluates, so a finished or
interrupted run can be re-rendered at any time. Markdown and HTML are built from one list of blocks
(:func:`retain.report.blocks.build_blocks`), so the two formats never disagree. The plain-words conclusions
(:func:`summary_lines`) come from :mod:`retain.report.summary`, shared with the terminal summary.

Only the standard library (and :mod:`retain.utils.files`) is imported here, so rendering a report does not import torch;
matplotlib is imported only when plotting. Every function takes a typed record
(:mod:`retain.report.record`) or the parsed ``result.json`` it came from.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any

from retain.report.blocks import build_blocks
from retain.report.columns import columns_for
from retain.report.landscape import section as landscape_section
from retain.report.record import Record
from retain.report.summary import as_record, report_title, summary_lines
from retain.utils.files import write_atomic

__all__ = ["render_html", "render_markdown", "summary_lines", "write_reports"]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _blocks(record: Record, extra: list[Any] | None) -> list[Any]:
    """The record's blocks, with ``extra`` (the landscape section) before the definitions."""
    blocks = build_blocks(record)
    if not extra:
        return blocks
    at = next(
        (i for i, b in enumerate(blocks) if b[0] == "h" and b[2] == "Metric definitions"),
        len(blocks),
    )
    return blocks[:at] + list(extra) + blocks[at:]


def render_markdown(
    record: Record | dict[str, Any],
    images: dict[str, Path] | None = None,
    extra: list[Any] | None = None,
) -> str:
    """The report as Markdown; ``images`` maps plot keys to PNGs in a folder beside it (``plots/``,
    ``landscape/``); ``extra``: more blocks (the landscape section), before the definitions.

    Examples:
        >>> md = render_markdown({"kind": "run", "strategy": "finetune", "tasks": ["a"],
        ...                       "score": "accuracy", "matrix": [[0.1], [0.9]], "metrics": {}})
        >>> md.splitlines()[0]
        '# retain report: run'
    """
    images = images or {}
    out = []
    for block in _blocks(as_record(record), extra):
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
            head, rows, classes = block[1:4]
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
table.text{display:table;width:100%;table-layout:auto}
table.text td,table.text th{text-align:left;white-space:normal;vertical-align:top}
table.text td:nth-child(2){white-space:nowrap}
tr.best td{font-weight:bold;background:#eef7ee}tr.vanished td{background:#fff4e0}
.note{background:#fff1f0;border-left:4px solid #d1242f;padding:.6em 1em;font-weight:bold}
figure{display:inline-block;margin:.5em 1em .5em 0}figcaption{font-size:.85em;color:#57606a}
img{max-width:100%;height:auto}li{margin:.2em 0}
"""


def render_html(
    record: Record | dict[str, Any],
    images: dict[str, Path] | None = None,
    extra: list[Any] | None = None,
) -> str:
    """The report as one self-contained HTML page: inline CSS, PNGs embedded as data URIs."""
    record = as_record(record)
    images = images or {}
    e = html.escape
    body = []
    for block in _blocks(record, extra):
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
            head, rows, classes = block[1:4]
            table_cls = f' class="{block[4]}"' if len(block) > 4 else ""
            trs = []
            for i, row in enumerate(rows):
                cls = f' class="{classes[i]}"' if classes and classes[i] else ""
                trs.append(f"<tr{cls}>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>")
            body.append(
                f"<table{table_cls}><thead><tr>"
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
    title = e(report_title(record))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>retain report: {title}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# --------------------------------------------------------------------------- files


def _csv(rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _cell(value: Any) -> Any:
    return "" if value is None else value


def metrics_rows(record: Record) -> list[list[Any]]:
    """metrics.csv: a header and one row per strategy at full precision; empty cell for None."""
    columns = columns_for(list(record.runs.values()))
    rows: list[list[Any]] = [["strategy", "score", *(c.key for c in columns)]]
    # Runs over several seeds: the values are means; the seeds and each metric's std follow.
    seeded = [c for c in columns if any(c.std(r) is not None for r in record.runs.values())]
    if seeded:
        rows[0] += ["seeds", *(f"{c.key}_std" for c in seeded)]
    for label, run in record.runs.items():
        row = [label, run.score, *(_cell(c.value(run)) for c in columns)]
        if seeded:
            seeds = " ".join(map(str, run.spread.seeds)) if run.spread else ""
            row += [seeds, *(_cell(c.std(run)) for c in seeded)]
        rows.append(row)
    return rows


def matrix_rows(record: Record) -> list[list[Any]]:
    """matrix.csv in long format: strategy, matrix, after_task (0 = untrained), task, value."""
    rows: list[list[Any]] = [["strategy", "matrix", "after_task", "task", "value"]]
    seeded = any(r.spread is not None for r in record.runs.values())
    if seeded:  # runs over several seeds: value is the mean, std the spread across seeds
        rows[0].append("std")
    for label, run in record.runs.items():
        tasks = run.tasks
        after = ["joint"] if run.joint else tasks
        for key, R in (run.matrices or {run.score: run.matrix}).items():
            S = run.matrix_std(key)
            for i, row in enumerate(R):
                for j, value in enumerate(row):
                    out = [label, key, 0 if i == 0 else after[i - 1], tasks[j], value]
                    rows.append(out + ([_cell(S[i][j] if S else None)] if seeded else []))
    return rows


def write_reports(out: Path, record: Record | dict[str, Any], plots: bool = True) -> list[Path]:
    """Write metrics.csv, matrix.csv, plots/*.png, report.md and report.html into ``out``.

    Works for a run record and a comparison record, finished or not (an incomplete record renders
    the rows computed so far and says it is incomplete).

    Args:
        out: the run directory (created if missing).
        record: a run or comparison record, or the parsed ``result.json``.
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
    record = as_record(record)
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
    # Drawn by `retain landscape`, not from the record: shown whenever its files are there.
    extra, drawn = landscape_section(out)
    images.update(drawn)
    written.append(write_atomic(out / "report.md", render_markdown(record, images, extra)))
    written.append(write_atomic(out / "report.html", render_html(record, images, extra)))
    return written
