"""The metrics table's columns, shared by every rendering: Markdown, HTML, the terminal, metrics.csv.

Each :class:`Column` says where its value lives in a run record, how it is printed, which way is
better and what it means; the definitions section of the report is built from the same list, so a
new metric is one entry here. The formulas restate the functions of :mod:`retain.eval.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from retain.report.record import RunRecord

ACCURACY_LIKE = frozenset({"accuracy", "task_il_accuracy", "token_accuracy"})
# Scores on a fixed, small scale: printed with 3 decimals. Others (MSE, loss, perplexity) are
# unbounded, so 3 significant digits keep 0.0123 and 1234 equally readable.
BOUNDED = ACCURACY_LIKE | {"r2"}
SCORE_NAMES = {
    "accuracy": "accuracy",
    "task_il_accuracy": "task-IL accuracy",
    "mse": "MSE",
    "r2": "R²",
    "loss": "loss",
    "perplexity": "perplexity",
    "token_accuracy": "token accuracy",
}


def score_name(score: str | None) -> str:
    """The display name of a score key (``"mse"`` -> ``"MSE"``)."""
    return SCORE_NAMES.get(score or "", score or "score")


def fmt(value: float | None, score: str | None = "accuracy") -> str:
    """Format a score-like number consistently: 3 decimals for bounded scores, else 3 digits.

    Examples:
        >>> fmt(0.17142), fmt(0.9011, "mse"), fmt(None)
        ('0.171', '0.901', '–')
    """
    if value is None:
        return "–"
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    if score in BOUNDED:
        s = f"{v:.3f}"
    elif v == 0:
        s = "0"
    elif abs(v) >= 1000:
        s = f"{v:,.0f}"
    else:
        s = f"{v:#.3g}".rstrip(".")
    # "-0.000" reads as a loss where there is none.
    return s.lstrip("-") if float(s.replace(",", "")) == 0 else s


# "score": in the units of the run's score (3 decimals or 3 digits); the others are costs.
Kind = Literal["score", "seconds", "rate", "megabytes"]
# "score": better in the score's own direction (lower for MSE); the rest are fixed.
Direction = Literal["score", "higher", "lower"]


@dataclass(frozen=True)
class Column:
    """One column of the metrics table.

    Attributes:
        key: the name in ``metrics.csv`` and in the run record.
        header: the report's header; ``{score}`` is replaced by the score's display name.
        short: the terminal's header (``None``: not shown in the terminal).
        value: where the number lives in a run record.
        kind: how the number is printed.
        direction: which way is better.
        meaning: a plain-words definition; ``brief`` is the terminal caption's shorter one.
        formula, denominator: the definition over R (metrics only).
        optional: shown only where some run of the record has a value.
    """

    key: str
    header: str
    short: str | None
    value: Callable[[RunRecord], float | None]
    kind: Kind
    direction: Direction
    meaning: str
    brief: str = ""
    formula: str = ""
    denominator: str = ""
    optional: bool = False  # shown only when some run has a value (tokens/s: language models)

    def higher_is_better(self, score_higher: bool = True) -> bool:
        return score_higher if self.direction == "score" else self.direction == "higher"

    def std(self, run: RunRecord) -> float | None:
        """The standard deviation over seeds of a run over several seeds, else ``None``."""
        spread = run.spread
        return None if spread is None else spread.metrics_std.get(self.key)

    def cell(self, run: RunRecord, terminal: bool = False) -> str:
        """The column's text for ``run``: "–" where there is no value."""
        v = self.value(run)
        if self.kind == "score":
            std = self.std(run)
            sep = "±" if terminal else " ± "
            return fmt(v, run.score) + ("" if std is None else f"{sep}{fmt(std, run.score)}")
        if v is None or (self.kind == "rate" and not v):
            return "–"
        if self.kind == "seconds":
            return f"{v:.1f} s" if terminal else f"{v:.2f}"
        return rate(v) if self.kind == "rate" else f"{v:.0f}"


def rate(v: float) -> str:
    """A throughput: whole numbers from 100 up, else 3 significant digits (a slow step's 0.4
    samples/s is not 0).

    Examples:
        >>> rate(12345.6), rate(0.4123), rate(57.25)
        ('12,346', '0.412', '57.2')
    """
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def columns_for(runs: list[RunRecord]) -> tuple[Column, ...]:
    """The columns of a table of ``runs``: every column, less optional ones no run has."""
    return tuple(c for c in COLUMNS if not c.optional or any(c.value(r) is not None for r in runs))


def _metric(key: str) -> Callable[[RunRecord], float | None]:
    return lambda run: getattr(run.metrics, key) if run.metrics is not None else None


COLUMNS: tuple[Column, ...] = (
    Column(
        "avg_accuracy",
        "avg {score}",
        "avg",
        _metric("avg_accuracy"),
        "score",
        "score",
        "final score averaged over all tasks",
        "final score averaged over tasks",
        "(1/T) Σ_{j=1..T} R[T, j]",
        "T",
    ),
    Column(
        "bwt",
        "BWT",
        "BWT",
        _metric("bwt"),
        "score",
        "higher",
        "backward transfer: change on earlier tasks since training them, negative = forgotten",
        "backward transfer",
        "(1/(T-1)) Σ_{i=1..T-1} (R[T, i] - R[i, i])",
        "T - 1",
    ),
    Column(
        "fwt",
        "FWT",
        "FWT",
        _metric("fwt"),
        "score",
        "higher",
        "forward transfer: score on a task before training it, relative to the untrained model",
        "forward transfer",
        "(1/(T-1)) Σ_{i=2..T} (R[i-1, i] - R[0, i])",
        "T - 1",
    ),
    Column(
        "forgetting",
        "forgetting",
        "forget",
        _metric("forgetting"),
        "score",
        "lower",
        "drop from each earlier task's best score to its final one, positive = lost",
        "max-based forgetting",
        "(1/(T-1)) Σ_{j=1..T-1} max_{l=j..T-1} (R[l, j] - R[T, j])",
        "T - 1",
    ),
    Column(
        "plasticity",
        "plasticity",
        "plast",
        _metric("plasticity"),
        "score",
        "score",
        "score on each task just after training it (how well new tasks are learnt)",
        "score just after training each task",
        "(1/T) Σ_{i=1..T} R[i, i]",
        "T",
    ),
    Column(
        "gap_to_joint",
        "gap to joint",
        "gap",
        _metric("gap_to_joint"),
        "score",
        "lower",
        "joint training's average minus this one's, positive = worse than joint",
        "distance to joint training",
        "avg_accuracy(joint) - avg_accuracy",
        "",
    ),
    Column(
        "train_seconds",
        "train s",
        "train",
        lambda r: r.timing.train_seconds,
        "seconds",
        "lower",
        "seconds in the training loop",
    ),
    Column(
        "hook_seconds",
        "strategy s",
        None,
        lambda r: r.timing.hook_seconds,
        "seconds",
        "lower",
        "seconds of the strategies' work between tasks (Fisher passes, buffer "
        "selection, generator training)",
    ),
    Column(
        "samples_per_s",
        "samples/s",
        None,
        lambda r: r.timing.samples_per_s,
        "rate",
        "higher",
        "training samples per second",
    ),
    Column(
        "tokens_per_s",
        "tokens/s",
        None,
        lambda r: r.timing.tokens_per_s,
        "rate",
        "higher",
        "training tokens per second (attended tokens; language models)",
        optional=True,
    ),
    Column(
        "peak_rss_mb",
        "peak RSS MB",
        None,
        lambda r: r.memory.peak_rss_mb,
        "megabytes",
        "lower",
        "peak resident memory of the process",
    ),
)
BY_KEY = {c.key: c for c in COLUMNS}
METRIC_COLUMNS = tuple(c for c in COLUMNS if c.formula)
