"""Progress bars with ETA for training, on stderr so stdout stays clean for tables and pipes."""

from __future__ import annotations

from typing import Any


class RichProgress:
    """One bar per task: steps done, current loss, samples/s, elapsed and ETA."""

    def __init__(self, console: Any | None = None, prefix: str = "") -> None:
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
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._task: Any = None
        self._started = False

    def set_prefix(self, prefix: str) -> None:
        self.prefix = prefix

    def task(self, name: str, total: int) -> None:
        if not self._started:
            self._progress.start()
            self._started = True
        label = f"{self.prefix}{name}"
        self._task = self._progress.add_task(label, total=total, loss="-")

    def advance(self, steps: int, loss: float | None) -> None:
        if self._task is None:
            return
        fields = {"loss": f"{loss:.4f}"} if loss is not None else {}
        self._progress.update(self._task, advance=steps, **fields)

    def done(self) -> None:
        self._task = None

    def close(self) -> None:
        if self._started:
            self._progress.stop()
            self._started = False
