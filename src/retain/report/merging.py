"""The merge strategy's weight sweep in a report: a table and a retention-versus-new-task plot.

After each task the ``merge`` strategy (with ``sweep``) scores the merge at evenly spaced weights
of the new task's specialist (0: the model before the task, 1: the specialist) on every task and
every evaluation suite; result.json keeps them in ``strategy_stats[i]["merge"]["sweep"]``:
``{"split", "task", "points": [{"weight", "tasks": [{score: value} per task], "suites":
{name: {score: value}}}]}``. Each point of the plot is one weight: across, the score on the task
just trained; up, the mean score on the earlier tasks (solid) and on each suite (dashed). The
user picks the weight whose trade-off they want.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retain.report.columns import ACCURACY_LIKE, fmt, score_name
from retain.report.record import Record, RunRecord
from retain.report.suites import LOWER_IS_BETTER

SWEEP_NOTE = (
    "The merge was scored at each weight of the new task's specialist (mode previous: 0 is the "
    "model before the task, 1 the specialist; mode all: 0 leaves the new task out of the merge) "
    "on the {split} split of every task and on the evaluation suites; the run itself went on "
    "with its configured weight. Earlier tasks: the mean over the tasks trained before. Each "
    "point of the plot is one weight."
)


def sweeps(run: RunRecord) -> list[dict[str, Any]]:
    """The run's weight sweeps, one per task that had one."""
    return [s["merge"]["sweep"] for s in run.strategy_stats if "sweep" in s.get("merge", {})]


def _value(cell: dict[str, float], score: str) -> float | None:
    if score in cell:
        return cell[score]
    return next(iter(cell.values()), None)


def sweep_score(run: RunRecord, sweep: dict[str, Any]) -> str:
    """The score a sweep is told in: perplexity for a language model (its loss is what R
    holds, perplexity what people read), else the run's score."""
    from retain.report.suites import spoken_score

    cells = [c for p in sweep["points"] for c in p["tasks"] if c]
    return spoken_score(run.score, set(cells[0]) if cells else set())


def curve(run: RunRecord, sweep: dict[str, Any]) -> dict[str, list[float | None]]:
    """Per weight: ``new`` (the task just trained), ``earlier`` (mean over the tasks before it,
    None for the first) and one list per suite, in :func:`sweep_score`'s units."""
    i, score = sweep["task"], sweep_score(run, sweep)
    out: dict[str, list[float | None]] = {"weight": [], "new": [], "earlier": []}
    for p in sweep["points"]:
        scores = [_value(c, score) for c in p["tasks"]]
        out["weight"].append(p["weight"])
        out["new"].append(scores[i])
        old = [s for s in scores[:i] if s is not None]
        out["earlier"].append(sum(old) / len(old) if old else None)
        for name, cell in p["suites"].items():
            out.setdefault(f"suite {name}", []).append(_value(cell, score))
    return out


def sweep_blocks(runs: dict[str, RunRecord]) -> list[tuple]:
    """A table of the last sweep of each run that has one, and its plot."""
    blocks: list[tuple] = []
    for label, run in runs.items():
        found = sweeps(run)
        if not found:
            continue
        last = found[-1]
        c = curve(run, last)
        task = run.tasks[last["task"]] if last["task"] < len(run.tasks) else str(last["task"])
        cols = [k for k in c if k != "weight" and any(v is not None for v in c[k])]
        head = ["weight", *[f"{task} (new)" if k == "new" else k for k in cols]]
        score = sweep_score(run, last)
        rows = [[f"{w:g}", *(fmt(c[k][n], score) for k in cols)] for n, w in enumerate(c["weight"])]
        if not blocks:
            blocks.append(("h", 2, "Merge weight sweep"))
        blocks += [
            ("h", 3, f"{label}: after {task} ({score_name(score)})"),
            ("p", SWEEP_NOTE.format(split=last["split"])),
            ("table", head, rows, None),
            ("img", f"merge-sweep-{label}", f"{label}: retention against the new task"),
        ]
    return blocks


def sweep_plots(record: Record, folder: Path) -> dict[str, Path]:
    """``merge-sweep-<label>`` for every run with a sweep: retention against the new task."""
    from retain.report.plots import _figure, _save, _score_axis, slug

    out = {}
    for label, run in record.runs.items():
        found = sweeps(run)
        if not found:
            continue
        fig = _figure(6.4, 4.4)
        ax = fig.subplots()
        drawn = 0
        for sweep in found:
            c = curve(run, sweep)
            task = run.tasks[sweep["task"]] if sweep["task"] < len(run.tasks) else sweep["task"]
            for key in [k for k in c if k not in ("weight", "new")]:
                pts = [
                    (x, y, w)
                    for x, y, w in zip(c["new"], c[key], c["weight"])
                    if x is not None and y is not None
                ]
                if not pts:
                    continue
                drawn += 1
                xs, ys, ws = zip(*pts)
                style = "-" if key == "earlier" else "--"
                ax.plot(xs, ys, style, marker="o", markersize=3, label=f"after {task}: {key}")
                for x, y, w in pts:
                    ax.annotate(
                        f"{w:g}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points"
                    )
        if not drawn:  # one task and no suite: nothing was retained or lost
            continue
        score = sweep_score(run, found[-1])
        name = score_name(score)
        direction = ""
        if score in LOWER_IS_BETTER:  # up and to the right is better, as for accuracy
            ax.invert_xaxis()
            ax.invert_yaxis()
            direction = f"; {name}: lower is better, axes inverted"
        else:
            _score_axis(ax, score)
        ax.set_xlabel(f"{name} on the new task")
        ax.set_ylabel(f"{name} retained (earlier tasks, suites)")
        if score in ACCURACY_LIKE:
            ax.set_xlim(-0.03, 1.03)
        ax.legend(fontsize=7)
        ax.set_title(
            f"{label}: merge weight sweep\n(point labels: the new task's weight{direction})",
            fontsize=9,
        )
        fig.tight_layout()
        out[f"merge-sweep-{label}"] = _save(fig, Path(folder) / f"merge-sweep-{slug(label)}.png")
    return out
