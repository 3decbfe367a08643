"""Continual-learning metrics: pure functions of the score matrix R.

``R`` has ``T + 1`` rows and ``T`` columns. Row 0 is the model before any training; row ``i``
(1..T) is the model after training task ``i``; column ``j`` is the score on task ``j``'s test set.
In the formulas tasks are numbered from 1, so ``R[i, i]`` is the score on task ``i`` just after
training it, and ``R[T, i]`` the final score on it.

=================  ===========================================================  ============
metric             formula                                                      denominator
=================  ===========================================================  ============
avg_accuracy       (1/T) Σ_{j=1..T} R[T, j]                                      T
bwt                (1/(T-1)) Σ_{i=1..T-1} (R[T, i] - R[i, i])                    T - 1
fwt                (1/(T-1)) Σ_{i=2..T} (R[i-1, i] - R[0, i])                     T - 1
forgetting         (1/(T-1)) Σ_{j=1..T-1} max_{l=j..T-1} (R[l, j] - R[T, j])      T - 1
plasticity         (1/T) Σ_{i=1..T} R[i, i]                                      T
=================  ===========================================================  ============

BWT and FWT follow Lopez-Paz & Ranzato (2017), with FWT measured against the untrained model (row
0); forgetting follows Chaudhry et al. (2018) as mammoth computes it: the drop of each earlier task
from its best score between training it and the end (scores before a task was trained do not
count: what was never learnt cannot be forgotten). The last task is left out of BWT and forgetting (it has had no chance to be
forgotten), hence T - 1. With a single task, T - 1 = 0 and these are ``None``.

For scores where lower is better (MSE, loss, perplexity) pass ``higher_is_better=False``: BWT, FWT
and forgetting are then computed on ``-R``, so a negative BWT and a positive forgetting always mean
that something was lost, whatever the score. avg_accuracy and plasticity stay in the score's own
units (a mean MSE for regression).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_matrix(R: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    m = np.asarray(R, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] + 1:
        raise ValueError(f"R must have T+1 rows and T columns, got shape {m.shape}")
    return m


def _oriented(R: np.ndarray, higher_is_better: bool) -> np.ndarray:
    return R if higher_is_better else -R


def avg_accuracy(R: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Mean final score over all tasks: (1/T) Σ_j R[T, j].

    Examples:
        >>> avg_accuracy([[0.1, 0.1], [0.9, 0.2], [0.5, 0.8]])
        0.65
    """
    m = _as_matrix(R)
    return float(m[-1].mean())


def bwt(R: Sequence[Sequence[float]] | np.ndarray, higher_is_better: bool = True) -> float | None:
    """Backward transfer: (1/(T-1)) Σ_{i<T} (R[T, i] - R[i, i]); negative means forgetting.

    Examples:
        >>> round(bwt([[0.1, 0.1], [0.9, 0.2], [0.5, 0.8]]), 6)
        -0.4
    """
    m = _oriented(_as_matrix(R), higher_is_better)
    T = m.shape[1]
    if T < 2:
        return None
    return float(np.mean([m[T, i] - m[i + 1, i] for i in range(T - 1)]))


def fwt(R: Sequence[Sequence[float]] | np.ndarray, higher_is_better: bool = True) -> float | None:
    """Forward transfer: (1/(T-1)) Σ_{i>=2} (R[i-1, i] - R[0, i]), against the untrained model.

    Examples:
        >>> round(fwt([[0.1, 0.1], [0.9, 0.2], [0.5, 0.8]]), 6)
        0.1
    """
    m = _oriented(_as_matrix(R), higher_is_better)
    T = m.shape[1]
    if T < 2:
        return None
    # Task i (1-based, i >= 2) is column i-1; the row after task i-1 is row i-1.
    return float(np.mean([m[i - 1, i - 1] - m[0, i - 1] for i in range(2, T + 1)]))


def forgetting(
    R: Sequence[Sequence[float]] | np.ndarray, higher_is_better: bool = True
) -> float | None:
    """Average forgetting: (1/(T-1)) Σ_{j<T} max_{j<=l<T} (R[l, j] - R[T, j]); positive = lost.

    Examples:
        >>> round(forgetting([[0.1, 0.1], [0.9, 0.2], [0.5, 0.8]]), 6)
        0.4
    """
    per = per_task_forgetting(R, higher_is_better)
    return float(np.mean(per[:-1])) if len(per) > 1 else None


def per_task_forgetting(
    R: Sequence[Sequence[float]] | np.ndarray, higher_is_better: bool = True
) -> list[float]:
    """For each task j: its best score after training it and before the end, minus its final
    score (0 for the last task)."""
    m = _oriented(_as_matrix(R), higher_is_better)
    T = m.shape[1]
    out = []
    for j in range(T):
        if j == T - 1:
            out.append(0.0)
            continue
        best = max(
            m[row, j] for row in range(j + 1, T)
        )  # rows j+1 .. T-1: after task j, before the end
        out.append(float(best - m[T, j]))
    return out


def plasticity(R: Sequence[Sequence[float]] | np.ndarray) -> list[float]:
    """The diagonal R[i, i]: how well each task was learnt right after training it."""
    m = _as_matrix(R)
    return [float(m[i + 1, i]) for i in range(m.shape[1])]


def summary(R: Sequence[Sequence[float]] | np.ndarray, higher_is_better: bool = True) -> dict:
    """All metrics of a sequentially trained run."""
    diag = plasticity(R)
    return {
        "avg_accuracy": avg_accuracy(R),
        "bwt": bwt(R, higher_is_better),
        "fwt": fwt(R, higher_is_better),
        "forgetting": forgetting(R, higher_is_better),
        "plasticity": float(np.mean(diag)),
        "plasticity_per_task": diag,
        "forgetting_per_task": per_task_forgetting(R, higher_is_better),
    }


def joint_summary(final_row: Sequence[float]) -> dict:
    """Metrics of a run trained once on all tasks together: only the final scores exist."""
    row = [float(v) for v in final_row]
    return {
        "avg_accuracy": float(np.mean(row)),
        "bwt": None,
        "fwt": None,
        "forgetting": None,
        "plasticity": None,
        "plasticity_per_task": None,
        "forgetting_per_task": None,
    }


def gap_to_joint(joint_avg: float, strategy_avg: float, higher_is_better: bool = True) -> float:
    """How far a strategy's final average score is from joint training's (positive = worse)."""
    return float(joint_avg - strategy_avg) if higher_is_better else float(strategy_avg - joint_avg)
