"""One run over several seeds: the mean of each seed's record, with the spread across seeds.

``seeds: [0, 1, 2]`` in a config trains the same stream once per seed (the seed draws the data
split and order, the initial weights and every random choice of the strategies), each in its own
``seed-<s>`` folder with its own checkpoints. The run's record is then the mean over the seeds:
every entry of R, every metric (each seed's metric, averaged: forgetting is not a linear function
of R, so the metric of the mean matrix would differ), the timings. ``RunRecord.spread`` holds the
sample standard deviation (n - 1 in the denominator) of each of them, which the report prints as
``mean ± std``. Per-class counts are pooled over the seeds and the evaluation suites' scores
averaged; the loss and learning-rate curves,
early stopping and the strategies' statistics are the first seed's (each seed's own are in its
folder).

Only the standard library is imported, like the rest of the record code.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import fields
from typing import Any

from retain.report.record import Matrix, Metrics, PerClass, RunRecord, Spread


def _mean_std(values: list[Any]) -> tuple[Any, Any]:
    """Mean and sample std of numbers, or of equally long lists of numbers, elementwise.

    ``None`` stays ``None`` (a metric a seed lacks, e.g. BWT of one task); std is ``None`` for a
    single seed.
    """
    if any(v is None for v in values):
        return None, None
    if isinstance(values[0], list):
        pairs = [_mean_std(list(col)) for col in zip(*values)]
        return [m for m, _ in pairs], [s for _, s in pairs]
    nums = [float(v) for v in values]
    std = statistics.stdev(nums) if len(nums) > 1 else None
    return statistics.fmean(nums), std


def _matrix_mean_std(matrices: list[Matrix]) -> tuple[Matrix, Matrix | None]:
    if not matrices or any(len(m) != len(matrices[0]) for m in matrices):
        raise ValueError("the seeds' score matrices differ in shape")
    mean, std = _mean_std(matrices)
    return mean, (std if len(matrices) > 1 else None)


def _metrics_mean_std(all_metrics: list[Metrics]) -> tuple[Metrics, dict[str, Any]]:
    means: dict[str, Any] = {}
    stds: dict[str, Any] = {}
    for f in fields(Metrics):
        means[f.name], stds[f.name] = _mean_std([getattr(m, f.name) for m in all_metrics])
    return Metrics(**means), {k: v for k, v in stds.items() if v is not None}


def _pooled_per_class(records: list[RunRecord]) -> PerClass | None:
    """Per-class counts and correct predictions summed over the seeds (a pooled accuracy)."""
    parts = [r.per_class for r in records]
    if any(p is None for p in parts):
        return None

    def add(arrays: list[Any]) -> Any:
        if isinstance(arrays[0], list):
            return [add(list(col)) for col in zip(*arrays)]
        return sum(arrays)

    return PerClass(
        counts=add([p.counts for p in parts]),  # type: ignore[union-attr]
        correct=add([p.correct for p in parts]),  # type: ignore[union-attr]
    )


def _suites_mean(records: list[RunRecord]) -> Any:
    """The evaluation suites' scores per row, averaged over the seeds."""
    suites = [r.suites for r in records]
    if any(not s for s in suites) or any(set(s) != set(suites[0]) for s in suites):  # type: ignore[arg-type]
        return records[0].suites
    out: dict[str, list[dict[str, float]]] = {}
    for name in suites[0]:  # type: ignore[union-attr]
        per_seed = [s[name] for s in suites]  # type: ignore[index]
        out[name] = [
            {k: statistics.fmean(float(row[k]) for row in col) for k in col[0]}
            for col in zip(*per_seed)
        ]
    return out


def seeds_record(records: list[RunRecord], seeds: list[int], folders: list[str]) -> RunRecord:
    """The record of a run over ``seeds``: means of ``records`` (one per seed), spread attached.

    Examples:
        >>> from retain.report.record import RunRecord, Metrics
        >>> a = RunRecord(tasks=["t1"], matrix=[[0.1], [0.8]], metrics=Metrics(avg_accuracy=0.8))
        >>> b = RunRecord(tasks=["t1"], matrix=[[0.1], [0.9]], metrics=Metrics(avg_accuracy=0.9))
        >>> r = seeds_record([a, b], [0, 1], ["seed-0", "seed-1"])
        >>> round(r.metrics.avg_accuracy, 3), round(r.spread.metrics_std["avg_accuracy"], 4)
        (0.85, 0.0707)
    """
    if not records or len(records) != len(seeds):
        raise ValueError("one record per seed is needed")
    first = records[0]
    out = copy.deepcopy(first)
    out.matrix, matrix_std = _matrix_mean_std([r.matrix for r in records])
    out.matrices, matrices_std = {}, {}
    for key in first.matrices:
        out.matrices[key], matrices_std[key] = _matrix_mean_std([r.matrices[key] for r in records])
    complete = all(r.complete for r in records)
    metrics_std: dict[str, Any] = {}
    if complete:
        out.metrics, metrics_std = _metrics_mean_std([r.metrics for r in records])  # type: ignore[misc]
        out.metrics_by_score = {
            key: _metrics_mean_std([r.metrics_by_score[key] for r in records])[0]
            for key in first.metrics_by_score
            if all(key in r.metrics_by_score for r in records)
        }
    else:
        out.metrics, out.metrics_by_score = None, {}
    out.per_class = _pooled_per_class(records)
    out.suites = _suites_mean(records)
    for name in ("train_seconds", "hook_seconds", "eval_seconds", "samples_per_s"):
        setattr(out.timing, name, statistics.fmean(getattr(r.timing, name) for r in records))
    peaks = [r.memory.peak_rss_mb for r in records if r.memory.peak_rss_mb is not None]
    out.memory.peak_rss_mb = max(peaks) if peaks else None
    out.warnings = list(dict.fromkeys(w for r in records for w in r.warnings))
    out.status = "complete" if complete else "incomplete"
    out.seed = None
    out.started = min((r.started for r in records if r.started), default=None)
    out.finished = max((r.finished for r in records if r.finished), default=None)
    out.spread = Spread(
        seeds=list(seeds),
        runs=list(folders),
        matrix_std=matrix_std,
        matrices_std={k: v for k, v in matrices_std.items() if v is not None},
        metrics_std=metrics_std,
        avg_per_seed=[r.metrics.avg_accuracy if r.metrics else None for r in records],
    )
    return out
