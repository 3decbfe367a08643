"""PNG plots of a run or comparison record: score matrix heat maps and score curves.

matplotlib is imported inside the functions so that ``import retain`` stays fast. Figures are built
with :class:`matplotlib.figure.Figure` directly rather than through ``pyplot``: they never enter
pyplot's global figure list (nothing to close, nothing leaks across calls) and the user's
interactive backend is left alone; ``savefig`` to PNG renders with Agg.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import TYPE_CHECKING

from retain.report.columns import ACCURACY_LIKE, fmt, score_name
from retain.report.record import CompareRecord, Record, RunRecord
from retain.report.summary import row_labels

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
MAX_ANNOTATED = 15  # tasks beyond which the heat map's cell labels would overlap


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def _save(fig: Figure, path: Path) -> Path:
    from retain.utils.files import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return write_atomic(path, buf.getvalue())


def _direction(record: Record) -> str:
    return "higher is better" if record.higher_is_better else "lower is better"


def _score_axis(ax: object, score: str | None) -> None:
    """Fix the y-axis to the score's natural range, so a small wobble does not look like a cliff:
    [0, 1] for accuracy-like scores, from 0 for losses and errors (never negative), R² up to 1."""
    lo, hi = ax.get_ylim()  # type: ignore[attr-defined]
    if score in ACCURACY_LIKE:
        lo, hi = 0.0, 1.0
    elif score == "r2":
        hi = 1.0
    else:
        lo = 0.0
    pad = 0.03 * (hi - lo)
    ax.set_ylim(lo - pad, hi + pad)  # type: ignore[attr-defined]


def heatmap(record_run: RunRecord, path: Path) -> Path:
    """Annotated heat map of a run's score matrix R (rows: training steps, columns: tasks).

    The colour map is reversed for lower-is-better scores, so the "good" colour (yellow) always
    means a good score.
    """
    import numpy as np

    R = np.asarray(record_run.matrix, dtype=float)
    if R.ndim != 2 or R.size == 0:
        raise ValueError("the run has no score matrix to plot")
    score, tasks = record_run.score, list(record_run.tasks)
    higher = record_run.higher_is_better
    n_rows, n_tasks = R.shape
    fig = _figure(min(2.4 + 0.75 * n_tasks, 16), min(1.6 + 0.45 * n_rows, 12))
    ax = fig.subplots()
    # Accuracy-like scores share one fixed scale so heat maps of different runs compare by eye.
    vmin, vmax = (0.0, 1.0) if score in ACCURACY_LIKE else (np.nanmin(R), np.nanmax(R))
    im = ax.imshow(
        R, cmap="viridis" if higher else "viridis_r", vmin=vmin, vmax=vmax, aspect="auto"
    )
    ax.set_xticks(
        range(n_tasks),
        tasks[:n_tasks],
        rotation=45 if n_tasks > 6 else 0,
        ha="right" if n_tasks > 6 else "center",
    )
    ax.set_yticks(range(n_rows), row_labels(record_run))
    ax.set_xlabel("evaluated on task")
    if n_tasks <= MAX_ANNOTATED:
        for (i, j), v in np.ndenumerate(R):
            r, g, b, _ = im.cmap(im.norm(v))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # perceived luminance
            ax.text(
                j,
                i,
                fmt(v, score),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark else "black",
            )
    fig.colorbar(im, ax=ax, label=f"{score_name(score)} ({_direction(record_run)})")
    ax.set_title(f"{record_run.strategy}: {score_name(score)} after each step", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def task_curves(record_run: RunRecord, path: Path) -> Path:
    """Score on each task after each training step: one line per task."""
    R = record_run.matrix
    score, tasks = record_run.score, list(record_run.tasks)
    labels = row_labels(record_run)
    fig = _figure(6.4, 3.6)
    ax = fig.subplots()
    for j, task in enumerate(tasks):
        ax.plot(range(len(R)), [row[j] for row in R], marker="o", markersize=3, label=task)
    ax.set_xticks(
        range(len(R)),
        labels,
        rotation=45 if len(R) > 6 else 0,
        ha="right" if len(R) > 6 else "center",
    )
    ax.set_ylabel(f"{score_name(score)} ({_direction(record_run)})")
    _score_axis(ax, score)
    ax.set_title(f"{record_run.strategy}: {score_name(score)} on each task", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(
        fontsize=7,
        ncol=max(1, len(tasks) // 10),
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        title="task",
        title_fontsize=8,
    )
    fig.tight_layout()
    return _save(fig, path)


def compare_bars(record: CompareRecord, path: Path) -> Path:
    """Average final score per strategy; joint training is hatched, with a dashed reference line."""
    score = record.score
    runs = {label: r for label, r in record.runs.items() if r.metrics is not None and r.complete}
    labels = list(runs)
    values = [m.avg_accuracy for m in (runs[label].metrics for label in labels) if m is not None]
    fig = _figure(max(3.5, 1.0 + 0.9 * len(labels)), 3.6)
    ax = fig.subplots()
    bars = ax.bar(
        range(len(labels)),
        values,
        color=["#9aa3ad" if runs[lab].joint else f"C{i}" for i, lab in enumerate(labels)],
        edgecolor="black",
        linewidth=0.6,
    )
    for bar, label, value in zip(bars, labels, values):
        if runs[label].joint:
            bar.set_hatch("//")
            ax.axhline(value, color="black", linestyle="--", linewidth=0.8)
        ax.annotate(
            fmt(value, score),
            (bar.get_x() + bar.get_width() / 2, value),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    # The joint bar is marked on its axis label: a legend would cover the bars next to it.
    ticks = [f"{lab}\n(reference)" if runs[lab].joint else lab for lab in labels]
    ax.set_xticks(
        range(len(labels)),
        ticks,
        rotation=30 if len(labels) > 4 else 0,
        ha="right" if len(labels) > 4 else "center",
    )
    ax.set_ylabel(f"average final {score_name(score)}")
    ax.set_title(f"Average final {score_name(score)} ({_direction(record)})", fontsize=10)
    ax.margins(y=0.12)
    fig.tight_layout()
    return _save(fig, path)


def compare_curves(record: CompareRecord, path: Path) -> Path:
    """Average score over the tasks seen so far after each task, one line per strategy.

    Joint training has no sequence, so it is a horizontal reference line at its final average.
    """
    score, tasks = record.score, list(record.tasks)
    fig = _figure(6.4, 3.6)
    ax = fig.subplots()
    for i, (label, run) in enumerate(record.runs.items()):
        R = run.matrix
        if run.joint:
            if len(R) > 1:
                final = sum(R[-1]) / len(R[-1])
                ax.axhline(
                    final,
                    color="black",
                    linestyle="--",
                    linewidth=1,
                    label=f"{label} (all tasks at once)",
                )
            continue
        ys = [sum(R[k][:k]) / k for k in range(1, len(R))]
        ax.plot(range(1, len(R)), ys, marker="o", markersize=3, color=f"C{i}", label=label)
    ax.set_xticks(
        range(1, len(tasks) + 1),
        [f"after {t}" for t in tasks],
        rotation=45 if len(tasks) > 6 else 0,
        ha="right" if len(tasks) > 6 else "center",
    )
    ax.set_ylabel(f"avg {score_name(score)}, seen tasks")
    _score_axis(ax, score)
    ax.set_title(
        f"Average {score_name(score)} over the tasks seen so far ({_direction(record)})",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def stability(record_run: RunRecord, path: Path) -> Path:
    """Scores on the evaluation suites (and the tasks the guard watched) over the run's training
    steps: the dip while a new task trains and the recovery after it (the stability gap, De Lange
    et al. 2023), task boundaries dotted, the guard's limits dashed and its breaches crossed."""
    from retain.report.suites import LOWER_IS_BETTER, as_score, trajectories

    score, curves = trajectories(record_run)
    fig = _figure(7.2, 3.8)
    ax = fig.subplots()
    colours = {name: f"C{i}" for i, name in enumerate(curves)}
    for name, points in curves.items():
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1.2, color=colours[name], label=name)
    steps = [t.steps or 0 for t in record_run.timing.per_task]
    trained = [t.task for t in record_run.timing.per_task]
    start = 0
    for task, n in zip(trained, steps):
        ax.axvline(start, color="grey", linestyle=":", linewidth=0.8)
        ax.text(start, 1.0, f" {task}", transform=ax.get_xaxis_transform(), fontsize=7, va="top")
        start += n
    for g in record_run.guard or []:
        if g.task not in trained or as_score(0.0, g.metric, score) is None:
            continue  # the plot shows another score than the guard's, with no conversion
        i = trained.index(g.task)
        lo, hi = sum(steps[:i]), sum(steps[: i + 1])
        for name, lim in g.limits.items():
            if lim.get("limit") is not None:
                colour = colours.get(name, "black")
                y = as_score(lim["limit"], g.metric, score)
                ax.hlines(y, lo, hi, colors=colour, linestyles="--", linewidth=0.8)
        for b in g.breaches:
            y = as_score(b["score"], g.metric, score)
            ax.plot(lo + b["step"], y, marker="x", color="red", markersize=7)
    ax.set_xlabel("training step (whole run)")
    ax.set_ylabel(
        f"{score_name(score)} ({'lower' if score in LOWER_IS_BETTER else 'higher'} is better)"
    )
    ax.set_title(f"{record_run.strategy}: {score_name(score)} during training", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return _save(fig, path)


def loss_curve(record_run: RunRecord, path: Path) -> Path:
    """The training loss over the whole stream: each task's logged losses one after another on
    one step axis, task boundaries dotted, so a jump where a new task starts shows at a glance."""
    fig = _figure(6.4, 3.2)
    ax = fig.subplots()
    start = 0
    trained = [t.task for t in record_run.timing.per_task]
    for i, points in enumerate(record_run.curves.loss):
        task = trained[i] if i < len(trained) else str(i + 1)
        if points:
            xs = [start + p[0] for p in points]
            ax.plot(xs, [p[1] for p in points], marker="o", markersize=2, color=f"C{i % 10}")
        ax.axvline(start, color="grey", linestyle=":", linewidth=0.8)
        ax.text(start, 1.0, f" {task}", transform=ax.get_xaxis_transform(), fontsize=7, va="top")
        steps = record_run.timing.per_task[i].steps if i < len(trained) else None
        start += steps or (int(points[-1][0]) if points else 0)
    if all(p[1] > 0 for points in record_run.curves.loss for p in points):
        ax.set_yscale("log")  # losses fall over orders of magnitude within a task
    ax.set_xlabel("training step (whole run)")
    ax.set_ylabel("training loss")
    ax.set_title(f"{record_run.strategy}: training loss over the stream", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def slug(label: str) -> str:
    """A file-name-safe form of a strategy label (``"ewc+replay"`` stays as it is)."""
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "-", label).strip("-") or "run"


def plot_all(record: Record, folder: Path) -> dict[str, Path]:
    """Draw every plot of a record into ``folder``; return ``{plot key: path}``.

    Keys: ``compare-bars`` and ``compare-curves`` for a comparison (and ``compare-tradeoff``
    when its runs have evaluation suites), ``heatmap-<label>`` for every
    run with rows, ``curves-<label>`` for every sequential run with at least one trained task,
    ``loss-<label>`` for every run with a logged training loss.
    """
    import matplotlib

    # Task names, strategy labels and file names are the user's text: a '$' in them must print
    # as a dollar sign, not start matplotlib's math mode (which fails on unbalanced input).
    with matplotlib.rc_context({"text.parse_math": False}):
        return _plot_all(record, Path(folder))


def _plot_all(record: Record, folder: Path) -> dict[str, Path]:
    from retain.report import tradeoff

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    runs = record.runs
    if isinstance(record, CompareRecord):
        if any(r.complete for r in runs.values()):
            out["compare-bars"] = compare_bars(record, folder / "compare-bars.png")
        if any(len(r.matrix) > 1 for r in runs.values()):
            out["compare-curves"] = compare_curves(record, folder / "compare-curves.png")
        if tradeoff.drawable(record):
            out[tradeoff.KEY] = tradeoff.plot(record, folder / f"{tradeoff.KEY}.png")
        elif tradeoff.plasticity_drawable(record):
            path = folder / f"{tradeoff.PB_KEY}.png"
            out[tradeoff.PB_KEY] = tradeoff.plasticity_plot(record, path)
    for label, run in runs.items():
        rows = len(run.matrix)
        if rows:
            out[f"heatmap-{label}"] = heatmap(run, folder / f"heatmap-{slug(label)}.png")
        if rows > 1 and not run.joint:
            out[f"curves-{label}"] = task_curves(run, folder / f"curves-{slug(label)}.png")
        if any(run.curves.loss):
            out[f"loss-{label}"] = loss_curve(run, folder / f"loss-{slug(label)}.png")
        inside = any(p.get("suites") for points in (run.curves.eval or []) for p in points)
        if (run.suites and inside) or run.guard:
            out[f"stability-{label}"] = stability(run, folder / f"stability-{slug(label)}.png")
    from retain.report.merging import sweep_plots  # the merge strategy's weight sweep

    return out | sweep_plots(record, folder)
