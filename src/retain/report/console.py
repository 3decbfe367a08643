"""Print a run's or comparison's summary to the terminal (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from retain.report.columns import COLUMNS, score_name
from retain.report.record import Record
from retain.report.summary import (
    as_record,
    best_strategy,
    data_line,
    report_title,
    summary_lines,
)

# The columns narrow enough for a terminal: those with a short header.
TERMINAL_COLUMNS = tuple(c for c in COLUMNS if c.short)


def print_summary(record: Record | dict[str, Any], console: Console) -> None:
    """Print a metrics table (one row per strategy) and the summary lines to a rich console.

    Args:
        record: a run or comparison record, or the parsed ``result.json``.
        console: where to print, e.g. ``rich.console.Console()``.
    """
    from rich.table import Table
    from rich.text import Text

    record = as_record(record)
    best = best_strategy(record)
    table = Table(
        title=f"{report_title(record)}: {score_name(record.score)} "
        f"({'higher' if record.higher_is_better else 'lower'} is better)"
    )
    table.add_column("strategy", no_wrap=True)
    for c in TERMINAL_COLUMNS:
        table.add_column(c.short, justify="right", no_wrap=True)
    table.caption = "; ".join(f"{c.short}: {c.brief}" for c in TERMINAL_COLUMNS if c.brief) + (
        "; bold: best non-joint" if best else ""
    )
    for label, run in record.runs.items():
        table.add_row(
            label + ("" if run.complete else " (incomplete)"),
            *(c.cell(run, terminal=True) for c in TERMINAL_COLUMNS),
            style="bold" if label == best else None,
        )
    console.print(table)
    # Text() keeps "[...]" in a line from being read as rich markup.
    data = data_line(record)
    for line in ([data] if data else []) + summary_lines(record):
        console.print(Text(f"• {line}"))
