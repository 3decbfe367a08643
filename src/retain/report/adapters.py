"""Adapter routing in a report: which adapter answered each task's inputs when no task id was
given (the ``lora`` strategy's ``routing_accuracy`` in ``strategy_stats``). Only the standard
library is imported."""

from __future__ import annotations

from typing import Any

from retain.report.record import RunRecord

ROUTING_NOTE = (
    "Routing accuracy: the fraction of each task's test samples that the model sent to that "
    "task's own adapter, without task labels, after each task (rows: after training; columns: "
    "the task whose samples were routed). An input routed to another task's adapter is "
    "answered by a model that never trained on its task, so low routing accuracy costs "
    "accuracy even though no adapter forgot anything."
)


def routing_blocks(runs: dict[str, RunRecord]) -> list[Any]:
    """A routing-accuracy table per run whose strategies report one; nothing otherwise."""
    blocks: list[Any] = []
    for label, run in runs.items():
        rows = []
        for i, per_task in enumerate(run.strategy_stats):
            routed = next(
                (s["routing_accuracy"] for s in per_task.values() if "routing_accuracy" in s), None
            )
            if routed is None:
                continue
            task = run.tasks[i] if i < len(run.tasks) else str(i + 1)
            cells = [f"{v:.3f}" for v in routed]
            rows.append([task, *cells, *[""] * (len(run.tasks) - len(cells))])
        if rows:
            if not blocks:
                blocks += [("h", 2, "Adapter routing"), ("p", ROUTING_NOTE)]
            head = ["after", *run.tasks]
            blocks += [("h", 3, label), ("table", head, rows, None)]
    return blocks
