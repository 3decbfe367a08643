"""Cumulative training: sequential, but each task trains on all the data seen so far."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from retain.data.stream import TensorData
from retain.strategies import register
from retain.strategies.base import Strategy

if TYPE_CHECKING:
    from retain.strategies.context import TaskContext


@register("cumulative")
class Cumulative(Strategy):
    """Sequential training where task i trains on the union of tasks 1..i (a replay of everything).

    It keeps the previous task's weights, unlike ``joint``, and sees every earlier example again,
    so it bounds what any replay method can reach with the same model. The cost grows with every
    task: task i trains on i times as much data. It takes no hyperparameters.
    """

    rehearsal: ClassVar[bool] = True

    def train_data(self, data: TensorData, ctx: TaskContext) -> TensorData:
        earlier = [t.train for t in ctx.stream.tasks[: ctx.task_index]]
        return TensorData.concat([*earlier, data]) if earlier else data
