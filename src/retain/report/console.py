"""Print a run's or comparison's summary to the terminal (rich)."""

from __future__ import annotations

from rich.console import Console

from retain.report.blocks import METRIC_KEYS
from retain.report.summary import (
    Record,
    best_strategy,
    fmt,
    is_complete,
    report_title,
    runs_of,
    score_name,
    summary_lines,
)

#: Column headers narrow enough for a terminal, one per METRIC_KEYS entry (the key if missing).
SHORT = {"avg_accuracy": "avg", "bwt": "BWT", "fwt": "FWT", "forgetting": "forget",
         "plasticity": "plast", "gap_to_joint": "gap"}


def print_summary(record: Record, console: Console) -> None:
    """Print a metrics table (one row per strategy) and the summary lines to a rich console.

    Args:
        record: a run or comparison record (the contents of ``result.json``).
        console: where to print, e.g. ``rich.console.Console()``.
    """
    from rich.table import Table
    from rich.text import Text

    score = record.get("score")
    runs = runs_of(record)
    title = report_title(record)
    best = best_strategy(record)
    table = Table(
        title=f"{title}: {score_name(score)} "
        f"({'higher' if record.get('higher_is_better', True) else 'lower'} is better)"
    )
    table.add_column("strategy", no_wrap=True)
    for head in (*(SHORT.get(k, k) for k in METRIC_KEYS), "train"):
        table.add_column(head, justify="right", no_wrap=True)
    table.caption = ("avg: final score averaged over tasks; BWT/FWT: backward/forward transfer; "
                     "forget: max-based forgetting; plast: score just after training each task; "
                     "gap: distance to joint training" + ("; bold: best non-joint" if best else ""))
    for label, run in runs.items():
        m = run.get("metrics") or {}
        secs = (run.get("timing") or {}).get("train_seconds")
        table.add_row(
            label + ("" if is_complete(run) else " (incomplete)"),
            *(fmt(m.get(k), score) for k in METRIC_KEYS),
            f"{secs:.1f} s" if secs is not None else "–",
            style="bold" if label == best else None,
        )
    console.print(table)
    # Text() keeps "[...]" in a line from being read as rich markup.
    for line in summary_lines(record):
        console.print(Text(f"• {line}"))
