"""Progress bars with ETA for training, on stderr so stdout stays clean for tables and pipes.

The training loop calls ``task(name, total)``, ``advance(steps, loss)`` and ``done()`` for each
task it trains (its bars are named ``train <task>``); the evaluator does the same for each round
of evaluation. ``compare`` also calls :meth:`RichProgress.strategy` before each strategy, so
every bar names its strategy and position (``ewc 2/4 · train t3``) and shows an ETA for the
whole comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

TRAIN_PREFIX = "train "  # how the training loop names its bars (evaluation bars are not steps)


class Overall:
    """The ETA of a whole comparison: optimizer steps done against the steps planned.

    The plan (the steps of the strategy starting now and of those after it) is an estimate made
    before training; a task that stops early takes its unused steps out of it. The rate is the
    wall time per step so far, evaluation and strategy hooks included.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.start: float | None = None
        self.done = 0
        self.planned = 0

    def plan(self, steps_left: int) -> None:
        """A strategy starts: ``steps_left`` is planned for it and every strategy after it."""
        if self.start is None:
            self.start = self.clock()
        self.planned = self.done + max(0, steps_left)

    def advance(self, steps: int) -> None:
        self.done += steps
        self.planned = max(self.planned, self.done)

    def unused(self, steps: int) -> None:
        """A task ended ``steps`` before its planned end (early stopping)."""
        self.planned = max(self.done, self.planned - steps)

    def seconds_left(self) -> float | None:
        if self.start is None or self.done == 0:
            return None
        rate = (self.clock() - self.start) / self.done
        return rate * (self.planned - self.done)

    def text(self) -> str:
        left = self.seconds_left()
        if left is None:
            return ""
        m, s = divmod(int(round(left)), 60)
        h, m = divmod(m, 60)
        clock = f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
        return f"all {self.done}/{self.planned} steps, ETA {clock}"


class RichProgress:
    """One bar per task: steps done, current loss, elapsed and ETA (and, in a comparison, the
    strategy, its position and the comparison's ETA)."""

    def __init__(
        self,
        console: Any | None = None,
        prefix: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console or Console(stderr=True)
        self.prefix = prefix
        self.overall: Overall | None = None
        self._clock = clock
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[overall]}"),
            console=self.console,
            transient=False,
        )
        self._task: Any = None
        self._train = False
        self._completed = 0
        self._total = 0
        self._started = False

    def strategy(self, label: str, index: int, count: int, steps_left: int) -> None:
        """Strategy ``label`` (number ``index`` of ``count``) starts; ``steps_left``: the
        optimizer steps planned for it and for the strategies after it."""
        self.prefix = f"{label} {index}/{count} · "
        if self.overall is None:
            self.overall = Overall(self._clock)
        self.overall.plan(steps_left)

    def _overall_text(self) -> str:
        return self.overall.text() if self.overall is not None else ""

    def task(self, name: str, total: int) -> None:
        if not self._started:
            self._progress.start()
            self._started = True
        self._train = name.startswith(TRAIN_PREFIX)
        self._completed, self._total = 0, total
        label = f"{self.prefix}{name}"
        self._task = self._progress.add_task(
            label, total=total, loss="-", overall=self._overall_text()
        )

    def advance(self, steps: int, loss: float | None) -> None:
        if self._task is None:
            return
        self._completed += steps
        if self._train and self.overall is not None:
            self.overall.advance(steps)
        fields = {"loss": f"{loss:.4f}"} if loss is not None else {}
        self._progress.update(self._task, advance=steps, overall=self._overall_text(), **fields)

    def done(self) -> None:
        """The task ended; if it ended before its planned total (early stopping), the bar ends
        where it stopped, full, instead of waiting at 120/1500."""
        if self._task is None:
            return
        if self._completed < self._total:
            if self._train and self.overall is not None:
                self.overall.unused(self._total - self._completed)
            self._progress.update(self._task, total=self._completed, overall=self._overall_text())
        self._task = None

    def close(self) -> None:
        if self._started:
            self._progress.stop()
            self._started = False
