"""Shared by the strategies that grow the network by one trainable unit per task and freeze the
earlier ones (progressive: columns, parallel: stages)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from retain.errors import Unsupported
from retain.models import count_parameters
from retain.strategies.base import Strategy

if TYPE_CHECKING:
    from torch import nn

    from retain.strategies.context import TaskContext


class Growing(Strategy):
    """Wraps the model in ``net_type`` at ``setup``; before task ``k`` grows it to ``k + 1``
    units and leaves only the newest trainable. State: the unit count (``units_``), so a resumed
    run rebuilds the units before their weights are loaded, and each unit's parameter count."""

    unit: ClassVar[str] = "unit"  # its name in stats(): "column", "stage"
    net_type: ClassVar[type]
    unsupported: ClassVar[dict[str, str]] = {
        "causal_lm": "it grows a copy of a stack of Linear layers per task, and a transformer is "
        "not one; use freeze (train only the last blocks), ewc, or replay"
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        self.units_ = 1
        self.unit_params_: list[int] = []

    def build(self, model: nn.Module) -> nn.Module:
        """``model`` wrapped in ``net_type`` with one unit."""
        raise NotImplementedError

    def grow(self, net: nn.Module) -> None:
        """Add one unit to ``net``."""
        raise NotImplementedError

    def parts(self, net: nn.Module) -> list[nn.Module]:
        """Every unit's modules, oldest first."""
        raise NotImplementedError

    def check_model(self, model: nn.Module) -> None:
        from retain.models.stack import linear_stack

        linear_stack(model, self.name)  # parses only: the MLP-shaped models it can grow

    def setup(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        if isinstance(model, self.net_type):
            raise Unsupported(
                f"'{self.name}' was given a {self.net_type.__name__}: list it once per run"
            )
        net = self.build(model)
        self._grow_to(net, self.units_)  # resume: rebuild the units, weights come next
        return net

    def before_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        net = ctx.unwrap(model)
        if not isinstance(net, self.net_type):
            raise Unsupported(
                f"'{self.name}' expected its {self.net_type.__name__} before task "
                f"{ctx.task_index}, got {type(net).__name__}: another strategy "
                "replaced the model"
            )
        self._grow_to(net, ctx.task_index + 1)
        return net

    def _grow_to(self, net: nn.Module, n: int) -> None:
        while len(self.parts(net)) < n:
            self.grow(net)
        parts = self.parts(net)
        for k, part in enumerate(parts):
            part.requires_grad_(k == len(parts) - 1)
        self.units_ = len(parts)
        self.unit_params_ = [count_parameters(p) for p in parts]

    def stats(self) -> dict[str, Any]:
        per = self.unit_params_
        total = sum(per)
        return {
            f"{self.unit}s": self.units_,
            f"params_per_{self.unit}": list(per),
            "params": total,
            "growth": total / per[0] if per else 1.0,
        }
