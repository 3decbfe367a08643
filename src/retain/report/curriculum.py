"""The report's account of how each task's batches were drawn: the data mix and the order.

Rendered from the run record's ``curriculum`` (see :class:`~retain.report.record.RunRecord`);
part of the report's Data section. Only the standard library is imported.
"""

from __future__ import annotations

from typing import Any

from retain.report.record import RunRecord

MIX_NOTE = (
    "Data mixing: the pools each task's batches were drawn from, per phase of the task's "
    "optimizer steps: the target ratio, the realised ratio and the samples drawn (over all "
    "processes). Batches follow the targets as closely as whole samples allow."
)
ORDER_TEXT = {
    "easy_first": "lowest loss first",
    "hard_first": "highest loss first",
}


def _ratios(ratios: dict[str, Any]) -> str:
    return ", ".join(f"{k} {float(v):.2f}" for k, v in ratios.items())


def _drawn(drawn: dict[str, Any]) -> str:
    return ", ".join(f"{k} {int(v)}" for k, v in drawn.items())


def curriculum_blocks(runs: dict[str, RunRecord]) -> list[tuple[Any, ...]]:
    """A table of every mixed task's phases and a line per ordered task (several runs: one
    table, with a strategy column)."""
    runs = {label: r for label, r in runs.items() if r.curriculum}
    rows, orders = [], []
    several = len(runs) > 1
    for label, run in runs.items():
        for entry in run.curriculum or []:
            who = f"{label}, " if several else ""
            if entry.get("order") in ORDER_TEXT:
                orders.append(
                    f"{who}{entry['task']}: samples ordered by the model's loss before the task, "
                    f"{ORDER_TEXT[entry['order']]} (loss {entry.get('first_loss', 0):.4g} to "
                    f"{entry.get('last_loss', 0):.4g}; the forward pass took "
                    f"{entry.get('seconds', 0):.2g} s)"
                )
            for phase in entry.get("phases") or []:
                start, end = phase.get("steps", [0, 0])
                row = [entry["task"], f"{start}-{end}", _ratios(phase.get("target", {}))]
                row += [_ratios(phase.get("ratio", {})), _drawn(phase.get("drawn", {}))]
                rows.append([label, *row] if several else row)
    blocks: list[tuple[Any, ...]] = []
    if rows:
        head = ["task", "steps", "target", "realised", "samples drawn"]
        blocks += [("p", MIX_NOTE), ("table", ["strategy", *head] if several else head, rows, None)]
    if orders:
        blocks.append(("ul", orders))
    return blocks
