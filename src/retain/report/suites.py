"""Evaluation suites and the regression guard in a report: plain-words sentences, tables, and
the trajectories the stability plot draws.

A suite is a held-out set that is not a task (general English while the tasks are Spanish),
scored with every row of R; the guard checks suites and earlier tasks while a task trains. For a
language model the sentences speak in perplexity, the score people read ("perplexity on general
rose from 12.1 to 18.4 (+52%, worse)"); accuracies change in percentage points. Only the
standard library is imported.
"""

from __future__ import annotations

import math
from typing import Any

from retain.report.columns import ACCURACY_LIKE, fmt, score_name
from retain.report.record import RunRecord

# Scores where lower is better (the record states only the main score's direction).
LOWER_IS_BETTER = frozenset({"mse", "loss", "perplexity"})

SUITES_NOTE = (
    "Evaluation suites are held-out sets that are not tasks of the stream: never trained on, "
    "scored with every row of R, so they measure what the model loses of what it could do "
    "before (general text while the tasks are a new language or domain)."
)
GUARD_NOTE = (
    "The regression guard checked the watched sets every few steps while each task trained, "
    "against their scores just before that task (the baseline); limit is the worst score that "
    "passes. With action stop, training ends at the first failed check and the weights of the "
    "last passing check are restored."
)


def spoken_score(score: str, available: set[str] | list[str]) -> str:
    """The score sentences use: perplexity in place of a language model's loss, else ``score``."""
    if score == "loss" and "perplexity" in available:
        return "perplexity"
    return score


def as_score(value: float, metric: str, score: str) -> float | None:
    """``value`` of ``metric`` in the units of ``score``: the same, perplexity from a mean token
    loss (its exponential), else None (no conversion)."""
    if metric == score:
        return value
    if metric == "loss" and score == "perplexity":
        return math.exp(min(value, 50.0))  # the cap of retain.objectives.CausalLM.finalize
    return None


def change_words(score: str, before: float, after: float) -> str:
    """``"rose from 12.1 to 18.4 (+52%, worse)"``; ``"fell from 0.910 to 0.800 (11 points)"``.

    Examples:
        >>> change_words("perplexity", 12.1, 18.4)
        'rose from 12.1 to 18.4 (+52%, worse)'
        >>> change_words("accuracy", 0.91, 0.80)
        'fell from 0.910 to 0.800 (11 points)'
    """
    if fmt(before, score) == fmt(after, score):
        return f"stayed at {fmt(after, score)}"
    verb = "rose" if after > before else "fell"
    span = f"from {fmt(before, score)} to {fmt(after, score)}"
    if score in ACCURACY_LIKE:
        pts = round(abs(after - before) * 100)
        return f"{verb} {span} ({pts} point{'s' if pts != 1 else ''})"
    better = (after < before) == (score in LOWER_IS_BETTER)
    rel = f"{(after - before) / abs(before) * 100:+.0f}%, " if before else ""
    return f"{verb} {span} ({rel}{'better' if better else 'worse'})"


def suite_score(run: RunRecord) -> str | None:
    """The score the suites are told in (perplexity for a language model), if any."""
    cells = [c for rows in (run.suites or {}).values() for c in rows if c]
    if not cells:
        return None
    keys = set(cells[0])
    score = spoken_score(run.score, keys)
    return score if score in keys else next(iter(cells[0]))


def suite_sentence(run: RunRecord) -> str:
    """How each suite changed from the model before training to the last row."""
    score = suite_score(run)
    if score is None or len(run.matrix) < 2:
        return ""
    parts = []
    for name, rows in (run.suites or {}).items():
        first, last = rows[0].get(score), rows[-1].get(score)
        if first is not None and last is not None:
            parts.append(f"{score_name(score)} on {name} {change_words(score, first, last)}")
    if not parts:
        return ""
    return (
        "On the evaluation suites (held out, never trained on), from before training to the "
        f"end: {'; '.join(parts)}."
    )


def guard_sentence(run: RunRecord) -> str:
    """What the regression guard did, in one sentence."""
    if not run.guard:
        return ""
    action = run.guard[0].action
    breaches = [(g, b) for g in run.guard for b in g.breaches]
    if not breaches:
        return "The regression guard found no breach: every check stayed within its limit."
    listed = [
        f"{b['name']} at step {b['step']} of {g.task} ({score_name(g.metric)} "
        f"{fmt(b['score'], g.metric)}, limit {fmt(b['limit'], g.metric)})"
        for g, b in breaches[:6]
    ]
    more = f" and {len(breaches) - 6} more" if len(breaches) > 6 else ""
    text = f"The regression guard ({action}) saw {len(breaches)} breach"
    text += f"{'es' if len(breaches) != 1 else ''}: {'; '.join(listed)}{more}."
    stops = [g for g in run.guard if g.restored_step is not None]
    if stops:
        text += " It stopped " + "; ".join(
            f"{g.task} at step {g.stopped_at} and restored the weights of step {g.restored_step}"
            for g in stops
        )
        text += "."
    return text


def suite_blocks(runs: dict[str, RunRecord], row_labels: Any) -> list[tuple[Any, ...]]:
    """The suites' scores after each row of R, one table per strategy."""
    runs = {label: r for label, r in runs.items() if r.suites}
    if not runs:
        return []
    blocks: list[tuple[Any, ...]] = [("h", 2, "Evaluation suites"), ("p", SUITES_NOTE)]
    for label, run in runs.items():
        score = suite_score(run)
        if score is None:
            continue
        suites = run.suites or {}
        better = "lower" if score in LOWER_IS_BETTER else "higher"
        rows = [
            [lab] + [fmt(suites[n][i].get(score), score) for n in suites]
            for i, lab in enumerate(row_labels(run))
            if all(i < len(suites[n]) for n in suites)
        ]
        blocks += [
            ("h", 3, f"{label}: {score_name(score)} ({better} is better)"),
            ("table", ["model", *suites], rows, None),
        ]
        inside = any(p.get("suites") for points in (run.curves.eval or []) for p in points)
        if inside and not run.guard:  # with a guard, the plot is in the guard's section
            blocks.append(("img", f"stability-{label}", f"{label}: scores during training"))
    return blocks


def guard_blocks(runs: dict[str, RunRecord]) -> list[tuple[Any, ...]]:
    """Per trained task: what the guard watched, its baselines and limits, what it did."""
    rows = []
    for label, run in runs.items():
        for g in run.guard or []:
            for name, lim in g.limits.items():
                hits = [b for b in g.breaches if b["name"] == name]
                thr = ", ".join(
                    f"{k} {lim[k]:g}" for k in ("relative", "absolute") if lim.get(k) is not None
                )
                rows.append(
                    [
                        label,
                        g.task,
                        name,
                        f"{score_name(g.metric)}, {thr}",
                        fmt(lim.get("baseline"), g.metric),
                        fmt(lim.get("limit"), g.metric),
                        str(len(g.checks) - 1),
                        ", ".join(str(b["step"]) for b in hits) or "none",
                        "–" if g.stopped_at is None else str(g.stopped_at),
                        "–" if g.restored_step is None else str(g.restored_step),
                    ]
                )
    if not rows:
        return []
    images = [
        ("img", f"stability-{label}", f"{label}: scores during training, with the guard's limits")
        for label, run in runs.items()
        if run.guard
    ]
    head = [
        "strategy",
        "task",
        "watched",
        "threshold",
        "baseline",
        "limit",
        "checks",
        "breached at step",
        "stopped at",
        "restored step",
    ]
    return [("h", 2, "Regression guard"), ("p", GUARD_NOTE), ("table", head, rows, None), *images]


def trajectories(run: RunRecord) -> tuple[str | None, dict[str, list[tuple[int, float]]]]:
    """The spoken score and, per suite and guarded task, ``(step, value)`` over the whole run
    (steps counted from the run's start): the rows of R at task ends, the evaluations inside
    tasks (``eval.every_steps``) and the guard's checks."""
    score = suite_score(run) or spoken_score(run.score, set(run.matrices))
    steps = [t.steps or 0 for t in run.timing.per_task]
    offsets = [sum(steps[:i]) for i in range(len(steps) + 1)]
    trained = [t.task for t in run.timing.per_task]
    # (step, order, value): at one step, a check inside the task comes before the row of R made
    # after it (they differ when the guard restored earlier weights).
    out: dict[str, list[tuple[int, int, float]]] = {}

    def add(name: str, step: int, cell: dict[str, float] | None, order: int) -> None:
        if cell and score in cell and cell[score] is not None:
            out.setdefault(name, []).append((step, order, float(cell[score])))

    for name, rows in (run.suites or {}).items():
        for i, cell in enumerate(rows):
            if i < len(offsets):
                add(name, offsets[i], cell, 1)
    watched = {n for g in run.guard or [] for n in g.limits if n in run.tasks}
    R = run.matrices.get(score) or []
    for name in watched:
        j = run.tasks.index(name)
        for i in range(j + 1, min(len(R), len(offsets))):
            add(name, offsets[i], {score: R[i][j]}, 1)
    for i, points in enumerate(run.curves.eval or []):
        for p in points:
            for name, cell in (p.get("suites") or {}).items():
                add(name, offsets[i] + p["step"], cell, 0)
    for g in run.guard or []:
        i = trained.index(g.task) if g.task in trained else 0
        for c in g.checks:
            for name, cell in c["scores"].items():
                add(name, offsets[i] + c["step"], cell, 0)
    return score, {n: [(s, v) for s, _, v in sorted(pts)] for n, pts in out.items()}
