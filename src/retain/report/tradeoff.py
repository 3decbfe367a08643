"""The trade-off a comparison makes: what each strategy learned against what it kept.

One panel per evaluation suite, one point per strategy: across, the average final score on the
stream's tasks (what was learned); up, the final score on the suite (what was kept of what the
model could do before). The model before training is a point of its own when the stream starts
from a pretrained model, so a reader sees how far each strategy moved from it and in which
direction. Both axes use the suites' score (perplexity for a language model), and the axes are
oriented so that up and to the right is better whatever the score's direction.

Drawn for comparisons whose runs have suites. Without them, the scatter is plasticity against
BWT: what each strategy learned of each task against what it kept of the earlier ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from retain.report.columns import score_name
from retain.report.suites import LOWER_IS_BETTER, suite_score

if TYPE_CHECKING:
    from retain.report.record import CompareRecord, Record, RunRecord

KEY = "compare-tradeoff"
TITLE = "What each strategy learned against what it kept"
NOTE = (
    "One point per strategy: across, the average final score on the tasks (what was learned); "
    "up, the final score on each evaluation suite (what was kept). Up and to the right is better "
    "on both axes; the model before training is marked as a cross where the run starts from a "
    "pretrained model."
)
MAX_PANELS = 4


def _task_scores(run: RunRecord, score: str) -> list[list[float]] | None:
    """R in the units of ``score`` (the run's main score or one of its other matrices)."""
    if score == run.score:
        return run.matrix
    return run.matrices.get(score)


def points(run: RunRecord, score: str) -> list[tuple[float, dict[str, float]]]:
    """``[(task average, {suite: score})]`` for the first row of R and the last one."""
    R = _task_scores(run, score)
    if not R or not run.suites:
        return []
    out = []
    for i in (0, len(R) - 1):
        row = R[i]
        cells = {name: rows[i].get(score) for name, rows in run.suites.items() if i < len(rows)}
        kept = {name: v for name, v in cells.items() if v is not None}
        if row and kept:
            out.append((sum(row) / len(row), kept))
    return out


def drawable(record: Record) -> bool:
    """A comparison with at least one finished run that has suites and a trained row."""
    from retain.report.record import CompareRecord

    if not isinstance(record, CompareRecord):
        return False
    return any(r.complete and r.suites and len(r.matrix) > 1 for r in record.runs.values())


def plot(record: CompareRecord, path: Path) -> Path:
    """The scatter, one panel per suite (at most ``MAX_PANELS``)."""
    from retain.report.plots import _figure, _save

    runs = {
        label: r
        for label, r in record.runs.items()
        if r.complete and r.suites and len(r.matrix) > 1
    }
    first = next(iter(runs.values()))
    score = suite_score(first) or first.score
    suites = list(first.suites or {})[:MAX_PANELS]
    rows = (len(runs) + 2) // 3  # legend rows below the panels
    fig = _figure(max(6.4, 3.6 * len(suites)), 3.4 + 0.22 * rows)
    axes = fig.subplots(1, len(suites), squeeze=False)[0]
    lower = score in LOWER_IS_BETTER
    for ax, suite in zip(axes, suites):
        before_drawn = False
        for i, (label, run) in enumerate(runs.items()):
            pts = points(run, score)
            if len(pts) < 2 or suite not in pts[-1][1]:
                continue
            (x0, kept0), (x1, kept1) = pts[0], pts[-1]
            if run.initial and not before_drawn and suite in kept0:
                ax.plot(x0, kept0[suite], marker="x", color="black", markersize=8, linestyle="")
                ax.annotate(
                    f"before ({run.initial})",
                    (x0, kept0[suite]),
                    fontsize=7,
                    xytext=(4, 4),
                    textcoords="offset points",
                )
                before_drawn = True
            marker = "s" if run.joint else "o"
            ax.plot(x1, kept1[suite], marker=marker, color=f"C{i}", linestyle="", label=label)
        if lower:  # up and to the right is better on both axes
            ax.invert_xaxis()
            ax.invert_yaxis()
        ax.set_xlabel(f"tasks: average final {score_name(score)}", fontsize=8)
        ax.set_ylabel(f"{suite}: final {score_name(score)}", fontsize=8)
        ax.set_title(suite, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.margins(0.15)
    direction = "lower is better, axes inverted" if lower else "higher is better"
    fig.suptitle(f"Learned against kept ({score_name(score)}, {direction})", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    bottom = (0.22 * rows + 0.15) / (3.4 + 0.22 * rows)
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=min(3, len(handles)))
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return _save(fig, path)


# Without suites: what each strategy learned (plasticity) against what it kept of the earlier
# tasks (BWT), the stability-plasticity trade-off of the continual-learning literature.
PB_KEY = "compare-plasticity"
PB_TITLE = "Plasticity against stability"
PB_NOTE = (
    "One point per strategy: across, plasticity (the average score on each task right after "
    "training it: what was learned); up, BWT (the average change on earlier tasks after later "
    "ones trained: 0 is nothing lost). Up and to the right is better. Joint training has no "
    "sequence and is not shown."
)


def _pb_runs(record: Record) -> dict[str, RunRecord]:
    from retain.report.record import CompareRecord

    if not isinstance(record, CompareRecord):
        return {}
    return {
        label: r
        for label, r in record.runs.items()
        if r.complete and not r.joint and r.metrics is not None
        if r.metrics.plasticity is not None and r.metrics.bwt is not None
    }


def plasticity_drawable(record: Record) -> bool:
    """A comparison without the suites' scatter, with a finished sequential run."""
    return not drawable(record) and bool(_pb_runs(record))


def plasticity_plot(record: CompareRecord, path: Path) -> Path:
    """The plasticity-stability scatter, one point per sequential strategy."""
    from retain.report.plots import _figure, _save

    fig = _figure(6.4, 3.8)
    ax = fig.subplots()
    for i, (label, run) in enumerate(_pb_runs(record).items()):
        m = run.metrics
        assert m is not None and m.plasticity is not None and m.bwt is not None
        ax.plot(m.plasticity, m.bwt, marker="o", color=f"C{i}", linestyle="", label=label)
        ax.annotate(
            label, (m.plasticity, m.bwt), fontsize=7, xytext=(4, 4), textcoords="offset points"
        )
    ax.axhline(0.0, color="black", linewidth=0.8, linestyle="--")
    if not record.higher_is_better:
        ax.invert_xaxis()  # up and to the right is better
    ax.set_xlabel(f"plasticity (average {score_name(record.score)} right after training)")
    ax.set_ylabel("BWT (0: nothing lost)")
    direction = "higher is better" if record.higher_is_better else "lower is better, axis inverted"
    ax.set_title(f"{PB_TITLE} ({score_name(record.score)}, {direction})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(0.2)
    fig.tight_layout()
    return _save(fig, path)


def blocks(record: Record) -> list[tuple[object, ...]]:
    """The suites' scatter and its note, for a comparison that has it."""
    if not drawable(record):
        return []
    return [("h", 3, TITLE), ("p", NOTE), ("img", KEY, TITLE)]


def plasticity_blocks(record: Record) -> list[tuple[object, ...]]:
    """The plasticity-stability scatter, captioned with how to read it (beside the comparison's
    other figures; nothing when it is not drawn)."""
    if not plasticity_drawable(record):
        return []
    return [("img", PB_KEY, f"{PB_TITLE}. {PB_NOTE}")]
