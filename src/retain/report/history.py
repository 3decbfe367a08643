"""The run so far: one row of R per evaluation and what each task's training did.

A checkpoint saves it beside the weights and the strategies' state; the run record
(:func:`retain.report.result.build_record`) is built from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retain.strategies.base import Strategy


@dataclass
class History:
    """``rows[i][j]``: the scores of task j after step i (row 0: before training); ``fits``,
    ``params`` and ``strategy_stats``: per trained task, what its training did."""

    rows: list[list[dict[str, Any]]] = field(default_factory=list)
    fits: list[dict[str, Any]] = field(default_factory=list)
    params: list[int] = field(default_factory=list)
    strategy_stats: list[dict[str, Any]] = field(default_factory=list)
    schedule_offset: int = 0
    started: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )
    # Per row of R: {suite: {score: value}} on the stream's evaluation suites ({} without any).
    suites: list[dict[str, dict[str, float]]] = field(default_factory=list)

    @property
    def tasks_done(self) -> int:
        return len(self.fits)

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> History:
        return cls(
            state["rows"],
            state["fits"],
            state["params"],
            state.get("strategy_stats", []),
            state["schedule_offset"],
            state["started"],
            state.get("suites") or [{} for _ in state["rows"]],  # older checkpoints lack it
        )

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "fits": self.fits,
            "params": self.params,
            "schedule_offset": self.schedule_offset,
            "started": self.started,
            "strategy_stats": self.strategy_stats,
            "suites": self.suites,
        }

    def add(
        self,
        row: list[dict[str, Any]],
        fit: dict[str, Any],
        params: int,
        strategies: list[Strategy],
        suites: dict[str, dict[str, float]] | None = None,
    ) -> None:
        self.rows.append(row)
        self.suites.append(suites or {})
        self.fits.append(fit)
        self.schedule_offset += fit["steps"]
        self.params.append(params)
        self.strategy_stats.append({s.name or type(s).__name__: s.stats() for s in strategies})
