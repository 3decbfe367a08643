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
import math
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


def _image(key: str, images: dict[str, Path], base: Path | None) -> Path | None:
    """The file of an image block: a plot drawn for this report, or a figure another command
    wrote into the report's folder (``key`` a path relative to ``base``); None if neither."""
    if key in images:
        return Path(images[key])
    if base is not None and (Path(base) / key).is_file():
        return Path(base) / key
    return None


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
    base: Path | None = None,
    extra: list[Any] | None = None,
) -> str:
    """The report as Markdown; ``images`` maps plot keys to PNGs in a ``plots/`` folder beside it,
    ``base`` is the report's folder (where image blocks that name a file are looked up);
    ``extra``: more blocks (the landscape section), before the definitions.

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
        elif kind == "img":
            path = _image(block[1], images, base)
            if path is not None:
                where = f"{path.parent.name}/{path.name}"
                if base is not None and path.is_relative_to(base):
                    where = path.relative_to(base).as_posix()
                out.append(f"![{block[2]}]({where})")
        elif kind == "details":
            summary, text = block[1:3]
            out.append(
                f"<details><summary>{html.escape(summary)}</summary>\n\n```yaml\n"
                f"{text.rstrip()}\n```\n\n</details>"
            )
    return "\n\n".join(out) + "\n"


CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:0 auto;padding:1em 1em 3em;color:#1d2126;line-height:1.45;-webkit-text-size-adjust:100%}
h1{font-size:1.6em;border-bottom:2px solid #d0d7de;padding-bottom:.2em}
h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #e4e8ec}h3{font-size:1.05em}
p,li{overflow-wrap:anywhere}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em;display:block;overflow-x:auto;
max-width:100%}
th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:right;white-space:nowrap}
th{background:#f3f5f7}td:first-child,th:first-child{text-align:left}
table.text{display:table;width:100%;table-layout:auto}
table.text td,table.text th{text-align:left;white-space:normal;vertical-align:top}
table.text td:nth-child(2){white-space:nowrap}
tr.best td{font-weight:bold;background:#eef7ee}tr.vanished td{background:#fff4e0}
.note{background:#fff1f0;border-left:4px solid #d1242f;padding:.6em 1em;font-weight:bold}
figure{display:inline-block;margin:.5em 1em .5em 0;max-width:100%;vertical-align:top}
figcaption{font-size:.85em;color:#57606a}
img{max-width:100%;height:auto}li{margin:.2em 0}
details{margin:.6em 0;border:1px solid #d0d7de;border-radius:4px;padding:.3em .6em}
summary{cursor:pointer;font-weight:600}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:.85em;max-width:100%}
@media (max-width:640px){body{padding:.6em .6em 2em;font-size:15px}h1{font-size:1.3em}
h2{font-size:1.15em}figure{display:block;margin:.6em 0}th,td{padding:.2em .4em}
table.text{display:block}table.text td:nth-child(2){white-space:normal}}
"""

# The stops of matplotlib's viridis, so heat tables and heat-map images share one colour scale.
VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def heat_style(value: Any, heat: dict[str, Any]) -> str:
    """The inline style of one heat-table cell: viridis, yellow where the score is good.

    Examples:
        >>> heat_style(1.0, {"lo": 0.0, "hi": 1.0, "higher": True})
        'background:#fde725;color:#000'
        >>> heat_style(None, {"lo": 0.0, "hi": 1.0, "higher": True})
        ''
    """
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return ""
    lo, hi = heat["lo"], heat["hi"]
    t = 0.5 if hi <= lo else min(max((value - lo) / (hi - lo), 0.0), 1.0)
    if not heat["higher"]:
        t = 1.0 - t
    k = min(int(t * (len(VIRIDIS) - 1)), len(VIRIDIS) - 2)
    f = t * (len(VIRIDIS) - 1) - k
    rgb = [round(a + (b - a) * f) for a, b in zip(VIRIDIS[k], VIRIDIS[k + 1])]
    dark = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255 < 0.5  # perceived luminance
    return f"background:#{rgb[0]:02x}{rgb[1]:02x}{rgb[2]:02x};color:{'#fff' if dark else '#000'}"


def _html_table(block: tuple[Any, ...]) -> str:
    e = html.escape
    head, rows, classes = block[1:4]
    table_cls = f' class="{block[4]}"' if len(block) > 4 and block[4] else ""
    heat = block[5] if len(block) > 5 else None
    trs = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        cells = []
        for j, c in enumerate(row):
            style = ""
            if heat is not None and j > 0 and i < len(heat["values"]):
                values = heat["values"][i]
                style = heat_style(values[j - 1], heat) if j - 1 < len(values) else ""
            cells.append(
                f'<td style="{style}">{e(str(c))}</td>' if style else f"<td>{e(str(c))}</td>"
            )
        trs.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    return (
        f"<table{table_cls}><thead><tr>"
        + "".join(f"<th>{e(str(h))}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(trs)
        + "</tbody></table>"
    )


def render_html(
    record: Record | dict[str, Any],
    images: dict[str, Path] | None = None,
    base: Path | None = None,
    extra: list[Any] | None = None,
) -> str:
    """The report as one self-contained HTML page: inline CSS, every image embedded as a data
    URI, no script and nothing fetched, laid out for a laptop and a phone alike (wide tables
    scroll sideways on their own). ``images``, ``base`` and ``extra`` as for :func:`render_markdown`."""
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
            body.append(_html_table(block))
        elif kind == "img":
            path = _image(block[1], images, base)
            if path is None:
                continue
            mime = MIME.get(path.suffix.lower(), "image/png")
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{e(block[2])}" src="data:{mime};base64,{data}">'
                f"<figcaption>{e(block[2])}</figcaption></figure>"
            )
        elif kind == "details":
            body.append(
                f"<details><summary>{e(block[1])}</summary><pre>{e(block[2])}</pre></details>"
            )
    title = e(report_title(record))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
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
    written.append(write_atomic(out / "report.md", render_markdown(record, images, out, extra)))
    written.append(write_atomic(out / "report.html", render_html(record, images, out, extra)))
    return written
